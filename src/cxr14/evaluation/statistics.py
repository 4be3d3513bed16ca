"""Uncertainty for the test metrics: bootstrap intervals, paired comparisons, DeLong's test.

    intervals = bootstrap_intervals(targets, scores, patient_ids)        # resamples patients
    comparison = paired_bootstrap(targets, scores_a, scores_b, patient_ids)
    paired_bootstrap(targets, seeds_a, seeds_b, patient_ids)  # [S, N, 15]: means over training seeds
    seed_summary(targets, seeds_a, patient_ids)                          # spread across seeds + interval
    delong_test(targets[:, 2], scores_a[:, 2], scores_b[:, 2])           # one class, same images
    thresholds = sensitivity_thresholds(val_targets, val_scores, 0.9)    # validation split only
    threshold_metrics(test_targets, test_scores, thresholds)

Images of one patient are correlated (follow-up films, near duplicates). Resampling images, or
DeLong's variance, treats them as independent and understates the uncertainty; pass
`patient_ids` so that whole patients are resampled (cluster bootstrap). Dicts are keyed by label
name in `LABELS` order; a class without both outcomes has AUROC None and is left out of macro
averages, as in `metrics.py`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy.stats import norm

from cxr14.errors import InputDataError
from cxr14.evaluation.metrics import macro_auroc, sensitivity_threshold
from cxr14.labels import LABELS, NUM_CLASSES

# Resamples are processed in chunks whose micro-average weight matrix holds about this many
# float64 values (~32 MB), so 25,000 images x 15 classes never needs the whole [R, N*15] matrix.
_CHUNK_ELEMENTS = 4_000_000


# ---------------------------------------------------------------------------- validation


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r} (e.g. 0.95 for a 95% interval)")


def _checked_targets(targets: np.ndarray, ndim: int, shape_hint: str) -> np.ndarray:
    targets = np.asarray(targets)
    if targets.ndim != ndim or (ndim == 2 and targets.shape[1] != NUM_CLASSES):
        raise ValueError(f"targets must have shape {shape_hint}, got {targets.shape}")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must contain only 0 and 1")
    return targets > 0


def _checked_like(targets: np.ndarray, arrays: tuple[np.ndarray, ...], what: str) -> list[np.ndarray]:
    """Each array as float64, of the targets' shape and finite."""
    checked = []
    for array in arrays:
        array = np.asarray(array, dtype=np.float64)
        if array.shape != targets.shape:
            raise ValueError(f"{what} shape {array.shape} differs from targets shape {targets.shape}")
        if not np.isfinite(array).all():
            raise ValueError(f"{what} contain NaN or infinite values")
        checked.append(array)
    return checked


def check_matrices(targets: np.ndarray, *score_matrices: np.ndarray) -> tuple[np.ndarray, ...]:
    positives = _checked_targets(targets, 2, f"[N, {NUM_CLASSES}] in LABELS order")
    return (positives, *_checked_like(positives, score_matrices, "scores"))


def _check_vectors(targets: np.ndarray, *vectors: np.ndarray) -> tuple[np.ndarray, ...]:
    positives = _checked_targets(targets, 1, "[N] (one class)")
    return (positives, *_checked_like(positives, vectors, "scores/weights"))


# ------------------------------------------------------------- weighted ranking metrics


class _SortedClass:
    """One score column sorted once (ascending); every resample only changes the weights."""

    def __init__(self, positive: np.ndarray, scores: np.ndarray, weight_index: np.ndarray | None = None):
        order = np.argsort(scores, kind="stable")
        sorted_scores = scores[order]
        self.positive = positive[order].astype(np.float64)
        # Index into the per-image weight matrix (micro averaging maps entry -> image).
        self.weight_index = order if weight_index is None else weight_index[order]
        # Start of each run of equal scores: tied items are scored together (count 1/2).
        self.starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])

    def group_counts(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted positives and negatives per tie group, shape [R, groups] each."""
        sorted_weights = weights[:, self.weight_index]
        positives = sorted_weights * self.positive
        if len(self.starts) < len(self.positive):  # ties: merge each run of equal scores
            positives = np.add.reduceat(positives, self.starts, axis=1)
            sorted_weights = np.add.reduceat(sorted_weights, self.starts, axis=1)
        return positives, sorted_weights - positives

    def metrics(self, weights: np.ndarray, with_ap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """AUROC and average precision per weight row (NaN where undefined).

        AUROC is the weighted share of (positive, negative) pairs ranked correctly, a tie
        counting 1/2: each positive group pairs with the negatives below it plus half of the
        negatives in its own group; undefined without positive or negative weight.
        Average precision sums over distinct thresholds (high to low) the recall gained times
        the precision at that threshold, the step-wise definition scikit-learn uses;
        undefined without positive weight.
        """
        positives, negatives = self.group_counts(weights)
        negatives_below = np.cumsum(negatives, axis=1) - negatives
        total_positive = positives.sum(axis=1)
        total_negative = negatives_below[:, -1] + negatives[:, -1]
        correct_pairs = (positives * (negatives_below + 0.5 * negatives)).sum(axis=1)
        all_pairs = total_positive * total_negative
        auroc = np.divide(correct_pairs, all_pairs, out=np.full(len(weights), np.nan), where=all_pairs > 0)
        if not with_ap:
            return auroc, None
        # Items at or above each group's score = everything minus what lies strictly below.
        true_pos = total_positive[:, None] - (np.cumsum(positives, axis=1) - positives)
        predicted = true_pos + (total_negative[:, None] - negatives_below)
        # A group with no weight gains no recall; its 0/0 precision is never used.
        precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
        gained = (positives * precision).sum(axis=1)
        ap = np.divide(gained, total_positive, out=np.full(len(weights), np.nan), where=total_positive > 0)
        return auroc, ap


def _weighted_single(targets_1d, scores_1d, weights, metric: str) -> float | None:
    if weights is None:
        weights = np.ones(len(np.asarray(targets_1d)))
    positive, scores, weights = _check_vectors(targets_1d, scores_1d, weights)
    if (weights < 0).any():
        raise ValueError("weights must be non-negative (bootstrap multiplicities)")
    auroc, ap = _SortedClass(positive, scores).metrics(weights[None, :], with_ap=metric == "ap")
    value = (auroc if ap is None else ap)[0]  # ap is computed only for metric "ap"
    return None if np.isnan(value) else float(value)


def weighted_auroc(targets_1d: np.ndarray, scores_1d: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """AUROC with non-negative sample weights, ties counting 1/2, in O(n log n).

    Args:
        targets_1d: 0/1 outcome of one class.
        scores_1d: the model's scores.
        weights: per-sample multiplicities (e.g. from a bootstrap); None means all ones.

    Returns:
        The AUROC (equal to `roc_auc_score(..., sample_weight=weights)`), or None when the
        weighted positives or negatives sum to 0.
    """
    return _weighted_single(targets_1d, scores_1d, weights, "auroc")


def weighted_average_precision(
    targets_1d: np.ndarray, scores_1d: np.ndarray, weights: np.ndarray | None = None
) -> float | None:
    """Average precision with sample weights (equal to scikit-learn's), None without positives."""
    return _weighted_single(targets_1d, scores_1d, weights, "ap")


# ------------------------------------------------------------------------------ bootstrap


def _units(patient_ids: Sequence | np.ndarray | None, n_images: int) -> tuple[np.ndarray, str]:
    if patient_ids is None:
        return np.arange(n_images), "image"
    patient_ids = np.asarray(patient_ids)
    if patient_ids.shape != (n_images,):
        raise ValueError(f"patient_ids has shape {patient_ids.shape}, expected ({n_images},): one id per image")
    return np.unique(patient_ids, return_inverse=True)[1].ravel(), "patient"


def resampled_weights(units: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Per-image weights [chunk, N]: how often each image's unit was drawn, chunk by chunk.

    Drawing units (patients) with replacement and giving every image its unit's multiplicity
    is the cluster bootstrap; with one unit per image it is the ordinary bootstrap.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples!r}")
    rng = np.random.default_rng(seed)
    n_units = int(units.max()) + 1
    chunk = max(1, min(resamples, _CHUNK_ELEMENTS // (len(units) * NUM_CLASSES)))
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        draws = rng.integers(0, n_units, size=(size, n_units))
        rows = (draws + n_units * np.arange(size)[:, None]).ravel()
        counts = np.bincount(rows, minlength=size * n_units).reshape(size, n_units)
        yield counts[:, units].astype(np.float64)
        done += size


class _Model:
    """One model's score matrix, each class (and the flattened micro view) sorted once."""

    def __init__(self, positive: np.ndarray, scores: np.ndarray):
        self.classes = [_SortedClass(positive[:, i], scores[:, i]) for i in range(NUM_CLASSES)]
        image_of_entry = np.repeat(np.arange(len(scores)), NUM_CLASSES)  # row-major ravel
        self.micro = _SortedClass(positive.ravel(), scores.ravel(), weight_index=image_of_entry)

    def metrics(self, weights: np.ndarray, with_ap: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Per-class AUROC and AP, [R, 15] each (AP None unless `with_ap`)."""
        per_class = [sorted_class.metrics(weights, with_ap) for sorted_class in self.classes]
        auroc = np.stack([values[0] for values in per_class], axis=1)
        if not with_ap:
            return auroc, None
        return auroc, np.stack([ap for _, ap in per_class if ap is not None], axis=1)  # all, with_ap


def _macro_rows(values: np.ndarray) -> np.ndarray:
    """Mean over the classes defined in each row (NaN if none), without empty-slice warnings."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=1)
    total = np.where(defined, values, 0.0).sum(axis=1)
    return np.divide(total, count, out=np.full(len(values), np.nan), where=count > 0)


def percentile_interval(values: np.ndarray, level: float) -> tuple[float, float] | None:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return None
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def bootstrap_intervals(
    targets: np.ndarray,
    scores: np.ndarray,
    patient_ids: Sequence | np.ndarray | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile-bootstrap intervals for macro/micro AUROC and per-class AUROC and AP.

    Args:
        targets: [N, 15] 0/1 in LABELS order.
        scores: [N, 15] model scores.
        patient_ids: one id per image. Given, patients are resampled and each image enters
            with its patient's multiplicity; None resamples images (too narrow when patients
            have several images).
        resamples: number of bootstrap resamples.
        seed: seed of `numpy.random.default_rng`; the same seed and data give the same intervals.
        level: coverage of the intervals.

    Returns:
        {"macro_auroc", "micro_auroc": (low, high) or None, "macro_ap": (low, high) or None,
        "auroc", "ap": {label: (low, high) or None}, "resamples", "unit": "patient"|"image",
        "auroc_resamples": {label: resamples in which the class had both outcomes}}.
        A class without both outcomes in the data gets None. A rare class may lack positives
        in some resamples; its interval uses the other resamples (counted in
        "auroc_resamples"), and the macro AUROC of a resample averages the classes defined in
        it.
    """
    _check_level(level)
    positive, scores = check_matrices(targets, scores)
    units, unit = _units(patient_ids, len(positive))
    model = _Model(positive, scores)
    auroc_rows, ap_rows, micro_rows = [], [], []
    for weights in resampled_weights(units, resamples, seed):
        auroc, ap = model.metrics(weights)
        assert ap is not None  # with_ap
        auroc_rows.append(auroc)
        ap_rows.append(ap)
        micro_rows.append(model.micro.metrics(weights, with_ap=False)[0])
    auroc, ap, micro = np.concatenate(auroc_rows), np.concatenate(ap_rows), np.concatenate(micro_rows)
    has_positive = np.asarray(positive.any(axis=0))
    has_both = has_positive & ~positive.all(axis=0)
    return {
        "macro_auroc": percentile_interval(_macro_rows(auroc), level),
        "micro_auroc": percentile_interval(micro, level),
        "macro_ap": percentile_interval(_macro_rows(ap), level),
        "auroc": {
            name: percentile_interval(auroc[:, i], level) if has_both[i] else None for i, name in enumerate(LABELS)
        },
        "ap": {
            name: percentile_interval(ap[:, i], level) if has_positive[i] else None for i, name in enumerate(LABELS)
        },
        "auroc_resamples": {name: int((~np.isnan(auroc[:, i])).sum()) for i, name in enumerate(LABELS)},
        "resamples": int(resamples),
        "unit": unit,
    }


class _SeedMean:
    """One architecture trained with several seeds: its macro AUROC is the mean over the seeds'
    macro AUROCs, each seed scored on the same (resampled) images."""

    def __init__(self, positive: np.ndarray, seed_scores: list[np.ndarray]):
        self.models = [_Model(positive, scores) for scores in seed_scores]

    def macro(self, weights: np.ndarray) -> np.ndarray:
        """[R]: per resample, the mean over seeds of the macro AUROC."""
        return np.mean([_macro_rows(model.metrics(weights, with_ap=False)[0]) for model in self.models], axis=0)


def _seed_stack(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(positives, per-seed checked score matrices) from [N, 15] (one seed) or [S, N, 15]."""
    scores = np.asarray(scores)
    stack = [scores] if scores.ndim == 2 else list(scores)
    if not stack:
        raise ValueError("scores of at least one training seed are needed, got an empty [0, N, 15] stack")
    positive, *checked = check_matrices(targets, *stack)
    return positive, checked


def _macro_difference(model_a: _SeedMean, model_b: _SeedMean, weights: np.ndarray) -> np.ndarray:
    return model_a.macro(weights) - model_b.macro(weights)


def paired_bootstrap(
    targets: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    patient_ids: Sequence | np.ndarray | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Macro-AUROC difference (a - b) of two models scored on the same images, same resamples.

    `scores_a` / `scores_b`: [N, 15], or [S, N, 15] for a model trained with S seeds (the two may
    have different S); a model's macro AUROC is then the mean over its seeds, in the observed
    difference and in every resample: the comparison is between the seed means.

    Returns:
        {"difference": observed a - b, "ci": (low, high), "p_value": two-sided bootstrap p,
        i.e. 2 x min(share of resampled differences <= 0, share >= 0), capped at 1}. Both
        models average the same classes in every resample (definedness depends on targets).
    """
    _check_level(level)
    positive, seeds_a = _seed_stack(targets, scores_a)
    _, seeds_b = _seed_stack(targets, scores_b)
    units, _ = _units(patient_ids, len(positive))
    model_a, model_b = _SeedMean(positive, seeds_a), _SeedMean(positive, seeds_b)
    ones = np.ones((1, len(positive)))
    observed = float(_macro_difference(model_a, model_b, ones)[0])
    if np.isnan(observed):
        raise InputDataError(
            "no class has both positives and negatives in the test split: the macro AUROC is "
            "undefined; use a larger split.test_fraction or more images"
        )
    differences = np.concatenate(
        [_macro_difference(model_a, model_b, weights) for weights in resampled_weights(units, resamples, seed)]
    )
    differences = differences[~np.isnan(differences)]
    p_value = min(1.0, 2.0 * min(float(np.mean(differences <= 0)), float(np.mean(differences >= 0))))
    return {"difference": observed, "ci": percentile_interval(differences, level), "p_value": p_value}


def seed_summary(
    targets: np.ndarray,
    seed_scores: np.ndarray,
    patient_ids: Sequence | np.ndarray | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """The macro AUROC of one architecture trained with several seeds, on the same test images.

    Args:
        seed_scores: [S, N, 15], one score matrix per training seed.
        seed: the bootstrap's seed (the data seed), not a training seed.

    Returns:
        {"macro_auroc": [per seed], "mean", "sd" (sample standard deviation across seeds, None
        for one seed), "min", "max", "ci": percentile interval of the mean over seeds when whole
        patients are resampled (with one seed: the ordinary macro-AUROC interval), "resamples"}.
        The spread says how much the ranking could move with another seed; the interval, how much
        with another test set.
    """
    _check_level(level)
    positive, stack = _seed_stack(targets, seed_scores)
    units, _ = _units(patient_ids, len(positive))
    model = _SeedMean(positive, stack)
    per_seed = [macro_auroc(positive.astype(int), scores) for scores in stack]  # as test_metrics computes it
    means = np.concatenate([model.macro(weights) for weights in resampled_weights(units, resamples, seed)])
    values = np.asarray(per_seed)
    defined = values[~np.isnan(values)]
    return {
        "macro_auroc": [None if np.isnan(value) else value for value in per_seed],
        "mean": float(defined.mean()) if len(defined) else None,
        "sd": float(defined.std(ddof=1)) if len(defined) > 1 else None,
        "min": float(defined.min()) if len(defined) else None,
        "max": float(defined.max()) if len(defined) else None,
        "ci": percentile_interval(means, level),
        "resamples": int(resamples),
    }


# --------------------------------------------------------------------------------- DeLong


def _structural_components(positive: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUROC and its placements: per positive, the share of negatives it outranks (ties 1/2);
    per negative, the share of positives that outrank it. Both have the AUROC as mean."""
    positive_scores = np.sort(scores[positive])
    negative_scores = np.sort(scores[~positive])
    below = np.searchsorted(negative_scores, positive_scores, side="left")
    tied = np.searchsorted(negative_scores, positive_scores, side="right") - below
    per_positive = (below + 0.5 * tied) / len(negative_scores)
    above = len(positive_scores) - np.searchsorted(positive_scores, negative_scores, side="right")
    tied = np.searchsorted(positive_scores, negative_scores, side="right") - np.searchsorted(
        positive_scores, negative_scores, side="left"
    )
    per_negative = (above + 0.5 * tied) / len(positive_scores)
    return float(per_positive.mean()), per_positive, per_negative


def _check_delong(positive: np.ndarray) -> None:
    n_positive = int(positive.sum())
    if n_positive < 2 or len(positive) - n_positive < 2:
        raise ValueError(
            f"DeLong needs at least 2 positives and 2 negatives, got {n_positive} and {len(positive) - n_positive}"
        )


def delong_test(targets_1d: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray) -> dict:
    """DeLong's test for two correlated AUROCs (two models, the same images of one class).

    The variance of the difference is the variance of the per-positive placement differences
    over the positives plus that of the per-negative ones over the negatives. It assumes
    independent images: with several images per patient prefer `paired_bootstrap` with
    `patient_ids`.

    Returns:
        {"auroc_a", "auroc_b", "difference" (a - b), "z", "p_value" (two-sided, normal)}.
        Zero variance (e.g. identical scores) gives z = 0 and p = 1 when the difference is 0.
    """
    positive, scores_a, scores_b = _check_vectors(targets_1d, scores_a, scores_b)
    _check_delong(positive)
    auroc_a, positives_a, negatives_a = _structural_components(positive, scores_a)
    auroc_b, positives_b, negatives_b = _structural_components(positive, scores_b)
    difference = auroc_a - auroc_b
    variance = np.var(positives_a - positives_b, ddof=1) / len(positives_a) + np.var(
        negatives_a - negatives_b, ddof=1
    ) / len(negatives_a)
    if variance > 0:
        z = difference / np.sqrt(variance)
    else:
        z = 0.0 if difference == 0 else float(np.copysign(np.inf, difference))
    return {
        "auroc_a": auroc_a,
        "auroc_b": auroc_b,
        "difference": float(difference),
        "z": float(z),
        "p_value": float(2 * norm.sf(abs(z))),
    }


def delong_ci(targets_1d: np.ndarray, scores: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Normal-approximation interval for one AUROC with DeLong's variance, clipped to [0, 1]."""
    _check_level(level)
    positive, scores = _check_vectors(targets_1d, scores)
    _check_delong(positive)
    auroc, per_positive, per_negative = _structural_components(positive, scores)
    variance = np.var(per_positive, ddof=1) / len(per_positive) + np.var(per_negative, ddof=1) / len(per_negative)
    half_width = norm.ppf((1 + level) / 2) * np.sqrt(variance)
    return float(max(0.0, auroc - half_width)), float(min(1.0, auroc + half_width))


# ----------------------------------------------------------------------------- thresholds


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def threshold_metrics(targets: np.ndarray, scores: np.ndarray, thresholds: dict[str, float]) -> dict[str, dict]:
    """Per class {sensitivity, specificity, ppv, f1} predicting positive where score >= threshold.

    A value whose denominator is 0 (no positives, no negatives, nothing predicted) is None.
    """
    missing = [name for name in LABELS if name not in thresholds]
    if missing:
        raise ValueError(f"thresholds lack labels {missing}; pass one threshold for each of LABELS")
    positive, scores = check_matrices(targets, scores)
    out: dict[str, dict] = {}
    for i, name in enumerate(LABELS):
        predicted = scores[:, i] >= thresholds[name]
        true_pos = int((predicted & positive[:, i]).sum())
        false_pos = int((predicted & ~positive[:, i]).sum())
        false_neg = int((~predicted & positive[:, i]).sum())
        true_neg = int((~predicted & ~positive[:, i]).sum())
        out[name] = {
            "sensitivity": _ratio(true_pos, true_pos + false_neg),
            "specificity": _ratio(true_neg, true_neg + false_pos),
            "ppv": _ratio(true_pos, true_pos + false_pos),
            "f1": _ratio(2 * true_pos, 2 * true_pos + false_pos + false_neg),
        }
    return out


def sensitivity_thresholds(val_targets: np.ndarray, val_scores: np.ndarray, target: float = 0.9) -> dict[str, float]:
    """Per class, the highest threshold whose sensitivity on these data is >= `target`
    (:func:`cxr14.evaluation.metrics.sensitivity_threshold` of the class's positives).

    Pass the validation split only: choosing thresholds on the test split and then reporting
    test sensitivity/specificity at them is optimistic. A class without validation positives
    gets 0.5 (nothing to tune on).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target!r}")
    positive, scores = check_matrices(val_targets, val_scores)
    return {name: sensitivity_threshold(scores[positive[:, i], i], target) for i, name in enumerate(LABELS)}


# ------------------------------------------------------------------ accuracy, calibration


def seed_accuracy(targets: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Keras `binary_accuracy` as the seed project reports it: share of all N x 15 entries
    where (score >= threshold) equals the target.

    Misleading here: most of the 15 labels are negative for most images (each finding has a
    prevalence of a few percent), so a model predicting "no finding anywhere" already scores
    about 0.9 while detecting nothing. Report AUROC/AP and per-class sensitivity instead.
    """
    positive, scores = check_matrices(targets, scores)
    return float(np.mean((scores >= threshold) == positive))


def calibration(targets: np.ndarray, scores: np.ndarray, bins: int = 10) -> dict:
    """Expected calibration error over all N x 15 entries, with equal-width score bins.

    Returns:
        {"ece": sum over bins of (share of entries) x |mean score - observed rate|,
        "bins": [{"bin_low", "bin_high", "count", "mean_score", "observed_rate"}]}; an empty
        bin has None for its mean score and observed rate. A score of exactly 1 falls in the
        last bin.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins!r}")
    positive, scores = check_matrices(targets, scores)
    positive, scores = positive.ravel(), scores.ravel()
    if ((scores < 0) | (scores > 1)).any():
        raise ValueError("calibration needs probabilities: scores must lie in [0, 1]")
    index = np.minimum((scores * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    score_sums = np.bincount(index, weights=scores, minlength=bins)
    positive_sums = np.bincount(index, weights=positive.astype(np.float64), minlength=bins)
    table, ece = [], 0.0
    for b in range(bins):
        mean_score = score_sums[b] / counts[b] if counts[b] else None
        observed_rate = positive_sums[b] / counts[b] if counts[b] else None
        if mean_score is not None and observed_rate is not None:  # the bin has entries
            ece += counts[b] / len(scores) * abs(mean_score - observed_rate)
        table.append(
            {
                "bin_low": b / bins,
                "bin_high": (b + 1) / bins,
                "count": int(counts[b]),
                "mean_score": None if mean_score is None else float(mean_score),
                "observed_rate": None if observed_rate is None else float(observed_rate),
            }
        )
    return {"ece": float(ece), "bins": table}
