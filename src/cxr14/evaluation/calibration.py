"""Calibration of the 15 sigmoid scores: Brier score, ECE, and temperature scaling per finding.

    calibrated_test_scores, summary = calibrate(val_targets, val_scores, test_targets, test_scores, bins=10)

Temperature scaling (Guo et al., 2017) divides each finding's logit by one number T > 0 fitted
on the VALIDATION split (minimum binary negative log-likelihood), then maps back through the
sigmoid: p' = sigmoid(logit(p) / T). T > 1 softens over-confident scores, T < 1 sharpens
under-confident ones. The map is strictly increasing, so per-finding rankings (AUROC, AP, and
any threshold chosen by rank) stay the same; only the probabilities move. A finding with one
class only in validation (or no validation images) has nothing to fit and keeps T = 1.

Definitions used in the summary (every dict is keyed by label name in `LABELS` order):
- Brier score: mean of (score - target)^2 over the images of a finding.
- ECE: `statistics.calibration` (equal-width bins, |mean score - observed rate| weighted by the
  share of entries); per finding on that finding's column, "pooled" over all N x 15 entries.
- NLL: mean binary cross-entropy, with the input scores clipped to [CLIP, 1 - CLIP] first, so
  that one saturated score (exactly 0 or 1 in float32) on the wrong side cannot make it
  infinite. The fit minimises exactly this quantity; the calibrated scores themselves are
  computed from the unclipped logits, so even clipped scores keep their order.
Macro values are plain means over the 15 findings (all of these are defined with one class too).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar

from cxr14.evaluation.statistics import calibration, check_matrices
from cxr14.labels import LABELS

CLIP = 1e-7  # scores are clipped to [CLIP, 1 - CLIP] for the NLL (and the fit) only
LOG_T_BOUNDS = (-3.0, 3.0)  # T in [0.05, 20.1]: the search interval of the bounded 1-D fit


def _logit(scores: np.ndarray) -> np.ndarray:
    """logit in float64, exact in the tails (-inf at 0, +inf at 1, no clipping)."""
    scores = np.asarray(scores, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(scores) - np.log1p(-scores)


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """Stable sigmoid: exp only of non-positive numbers; +-inf give exactly 1 and 0."""
    out = np.empty_like(logits)
    positive = logits >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-logits[positive]))
    negative_exp = np.exp(logits[~positive])
    out[~positive] = negative_exp / (1.0 + negative_exp)
    return out


def _nll(targets_1d: np.ndarray, clipped_logits: np.ndarray, temperature: float) -> float:
    """Mean binary cross-entropy of sigmoid(logits / T): log(1 + e^s) - y s, stably."""
    scaled = clipped_logits / temperature
    return float(np.mean(np.logaddexp(0.0, scaled) - targets_1d * scaled))


def _clipped_logits(scores_1d: np.ndarray) -> np.ndarray:
    return _logit(np.clip(np.asarray(scores_1d, dtype=np.float64), CLIP, 1.0 - CLIP))


def fit_temperature(targets_1d: np.ndarray, scores_1d: np.ndarray) -> tuple[float, str | None]:
    """The temperature of one finding, fitted on these (validation) images.

    Minimises the NLL of sigmoid(logit(p) / T) over log T in LOG_T_BOUNDS with bounded Brent
    search: the NLL is convex in 1/T, hence unimodal in log T, so the 1-D search cannot end in
    a wrong local minimum; a fit that does not beat T = 1 (e.g. all scores 0.5) keeps T = 1.

    Returns:
        (T, None) when fitted, or (1.0, reason) when the images have one class only (or none).
    """
    positive = np.asarray(targets_1d, dtype=np.float64)
    if len(positive) == 0:
        return 1.0, "no validation images"
    if positive.min() == positive.max():
        return 1.0, f"validation has only {'positives' if positive[0] else 'negatives'}"
    logits = _clipped_logits(scores_1d)
    result = minimize_scalar(
        lambda log_t: _nll(positive, logits, float(np.exp(log_t))),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = float(np.exp(result.x))
    if not _nll(positive, logits, temperature) < _nll(positive, logits, 1.0):
        return 1.0, None
    return temperature, None


def apply_temperatures(scores: np.ndarray, temperatures: dict[str, float]) -> np.ndarray:
    """[N, 15] scores -> sigmoid(logit(scores) / T) per finding column (float64)."""
    scores = np.asarray(scores, dtype=np.float64)
    divisors = np.array([temperatures[name] for name in LABELS], dtype=np.float64)
    return _sigmoid(_logit(scores) / divisors[None, :])


def brier_scores(targets: np.ndarray, scores: np.ndarray) -> dict[str, float | None]:
    """Per finding, mean squared difference between score and 0/1 target (None without images)."""
    positive, scores = check_matrices(targets, scores)
    if len(positive) == 0:
        return dict.fromkeys(LABELS)
    squared = (scores - positive) ** 2
    return {name: float(value) for name, value in zip(LABELS, squared.mean(axis=0))}


def per_finding_ece(targets: np.ndarray, scores: np.ndarray, bins: int) -> dict[str, float | None]:
    """Per finding, the ECE of `statistics.calibration` on that finding's column alone.

    `calibration` pools all 15 columns; a matrix whose 15 columns are copies of one finding's
    column has the same bin shares and rates as that column, so it gives that finding's ECE
    with the very same binning rules (a score of exactly 1 in the last bin).
    """
    positive, scores = check_matrices(targets, scores)
    if len(positive) == 0:
        return dict.fromkeys(LABELS)
    out: dict[str, float | None] = {}
    for column, name in enumerate(LABELS):
        copies = np.repeat(scores[:, column : column + 1], len(LABELS), axis=1)
        truth = np.repeat(positive[:, column : column + 1], len(LABELS), axis=1).astype(np.uint8)
        out[name] = calibration(truth, copies, bins=bins)["ece"]
    return out


def _macro(values: dict[str, float | None]) -> float | None:
    defined = [value for value in values.values() if value is not None]
    return float(np.mean(defined)) if defined else None


def _nll_table(targets: np.ndarray, scores: np.ndarray, temperatures: dict[str, float]) -> dict[str, float | None]:
    """Per finding NLL of the scores at the given temperatures (None without images)."""
    if len(targets) == 0:
        return dict.fromkeys(LABELS)
    return {
        name: _nll(targets[:, column].astype(np.float64), _clipped_logits(scores[:, column]), temperatures[name])
        for column, name in enumerate(LABELS)
    }


Pair = tuple[np.ndarray, np.ndarray]  # (targets, scores) of one split


def _scores_block(val: Pair, test: Pair, scored_test: np.ndarray, temperatures: dict[str, float], bins: int) -> dict:
    """Brier and ECE (per finding, macro, pooled + reliability bins) of `scored_test`, and NLL on
    val and test of the raw scores at `temperatures` (all 1 with the raw scores: "before")."""
    test_targets, test_scores = test
    brier = brier_scores(test_targets, scored_test)
    ece = per_finding_ece(test_targets, scored_test, bins)
    reliability = calibration(test_targets, scored_test, bins=bins)
    val_nll = _nll_table(val[0], val[1], temperatures)
    test_nll = _nll_table(test_targets, test_scores, temperatures)
    return {
        "brier": brier,
        "macro_brier": _macro(brier),
        "ece": ece,
        "macro_ece": _macro(ece),
        "pooled_ece": reliability["ece"] if len(test_targets) else None,
        "reliability": reliability,
        "val_nll": val_nll,
        "macro_val_nll": _macro(val_nll),
        "test_nll": test_nll,
        "macro_test_nll": _macro(test_nll),
    }


def _distinct_per_column(scores: np.ndarray) -> list[int]:
    return [len(np.unique(scores[:, column])) for column in range(scores.shape[1])]


def calibrate(
    val_targets: np.ndarray,
    val_scores: np.ndarray,
    test_targets: np.ndarray,
    test_scores: np.ndarray,
    bins: int = 10,
) -> tuple[np.ndarray, dict]:
    """Fit one temperature per finding on validation, apply it to the test scores, measure both.

    Args:
        val_targets, val_scores: [N_val, 15] validation truth (0/1) and sigmoid scores.
        test_targets, test_scores: [N_test, 15] the same for the test split.
        bins: equal-width bins of the ECE (`evaluate.calibration_bins`).

    Returns:
        (calibrated test scores [N_test, 15] float64, JSON-ready summary): {"method", "clip",
        "bins", "val_images", "test_images", "temperatures": {label: T}, "unfitted": {label:
        reason} for the findings kept at T = 1 because validation had one class,
        "rank_preserved": {label: bool}, "before" and "after": {"brier", "ece", "val_nll",
        "test_nll": {label: value}, "macro_brier", "macro_ece", "macro_val_nll",
        "macro_test_nll", "pooled_ece", "reliability": `statistics.calibration` output}}.
        "rank_preserved" is False only where float64 rounding merged distinct scores (a
        sharpening T < 1 can push very confident scores to exactly 1.0).
    """
    val_positive, val_scores = check_matrices(val_targets, val_scores)
    test_positive, test_scores = check_matrices(test_targets, test_scores)
    for what, scores in (("validation", val_scores), ("test", test_scores)):
        if ((scores < 0) | (scores > 1)).any():
            raise ValueError(f"{what} scores must be probabilities in [0, 1]")
    temperatures: dict[str, float] = {}
    unfitted: dict[str, str] = {}
    for column, name in enumerate(LABELS):
        temperatures[name], reason = fit_temperature(val_positive[:, column], val_scores[:, column])
        if reason is not None:
            unfitted[name] = reason
    calibrated = apply_temperatures(test_scores, temperatures)
    val, test = (val_positive, val_scores), (test_positive, test_scores)
    summary = {
        "method": "temperature scaling per finding, fitted on validation (binary NLL, log T in [-3, 3])",
        "clip": CLIP,
        "bins": int(bins),
        "val_images": len(val_positive),
        "test_images": len(test_positive),
        "temperatures": temperatures,
        "unfitted": unfitted,
        "rank_preserved": {
            name: before == after
            for name, before, after in zip(LABELS, _distinct_per_column(test_scores), _distinct_per_column(calibrated))
        },
        "before": _scores_block(val, test, test_scores, dict.fromkeys(LABELS, 1.0), bins),
        "after": _scores_block(val, test, calibrated, temperatures, bins),
    }
    return calibrated, summary
