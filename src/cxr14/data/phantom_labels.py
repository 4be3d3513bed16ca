"""Label statistics of the phantom ChestX-ray14: per-image prevalence, labels per image, follow-ups.

    rng = np.random.default_rng(0)
    sample_labels(rng, 3)              # [('No Finding',), ('Effusion', 'Infiltration'), ...]
    sample_patient_labels(rng, 4)      # one patient's follow-ups; chronic findings persist

The counts follow the real data set (of 112,120 images: No Finding 53.8 %, Infiltration 17.7 %,
...; 81 % of images carry one label, 13 % two, 6 % three or more). Sampling draws the number of
findings first, then a weighted set without replacement whose weights are calibrated once, at
import, so that every finding's marginal prevalence comes out exact.
"""

from __future__ import annotations

import numpy as np

from cxr14.labels import LABELS, NO_FINDING

Gen = np.random.Generator
FINDINGS: tuple[str, ...] = tuple(name for name in LABELS if name != NO_FINDING)
PREVALENCE = {
    "Infiltration": 0.177,
    "Effusion": 0.119,
    "Atelectasis": 0.103,
    "Nodule": 0.056,
    "Mass": 0.052,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Pleural_Thickening": 0.030,
    "Cardiomegaly": 0.025,
    "Emphysema": 0.022,
    "Edema": 0.021,
    "Fibrosis": 0.015,
    "Pneumonia": 0.013,
    "Hernia": 0.002,
}
# P(k findings), k = 0..5: 53.8 % No Finding, 27.2 % one, 13 % two, 6 % three or more; the 3/4/5
# split makes those images carry 3.2 findings on average, so the prevalences above add up.
CARDINALITY = np.array([0.538, 0.272, 0.130, 0.06 * 0.82, 0.06 * 0.16, 0.06 * 0.02])
CHRONIC = np.isin(FINDINGS, ["Cardiomegaly", "Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening"])
P_REPEAT, P_KEEP_CHRONIC = 0.30, 0.45  # follow-up label kernels; the rest are fresh draws


def _suffix_esp(w: np.ndarray, kmax: int = len(CARDINALITY)) -> np.ndarray:
    """table[i, r] = e_r(w[i:]), the elementary symmetric polynomials of every suffix of w."""
    table = np.zeros((len(w) + 1, kmax + 1))
    table[len(w), 0] = 1.0
    for i in range(len(w) - 1, -1, -1):
        table[i] = table[i + 1]
        table[i, 1:] += w[i] * table[i + 1, :-1]
    return table


def _calibrate(target: np.ndarray, pk: np.ndarray, iters: int = 300) -> np.ndarray:
    """Fixed-point weights whose marginals (k ~ pk, then a weighted k-set) hit the targets."""
    w = target / target.sum()
    for _ in range(iters):
        e, f = _suffix_esp(w)[0], np.zeros((len(w), len(pk)))
        f[:, 0] = 1.0  # f[i, j] = e_j of the weights without item i
        for j in range(1, len(pk)):
            f[:, j] = e[j] - w * f[:, j - 1]
        w = w * target / (w * (f[:, :-1] / e[1 : len(pk)] * pk[1:]).sum(axis=1))
        w /= w.sum()
    return w


WEIGHTS = _calibrate(np.array([PREVALENCE[name] for name in FINDINGS]), CARDINALITY)
_TABLE, _TABLE_ACUTE = _suffix_esp(WEIGHTS), _suffix_esp(WEIGHTS[~CHRONIC])
_CUM_K = np.cumsum(CARDINALITY)


def _weighted_sets(rng: Gen, w: np.ndarray, table: np.ndarray, k: np.ndarray | list[int]) -> np.ndarray:
    """Exact vectorised draw of sets with P(S) ∝ prod(w_S) given |S| = k; bool [len(k), len(w)]."""
    r, u = np.asarray(k, dtype=int), rng.random((len(k), len(w)))
    out = np.zeros((len(k), len(w)), dtype=bool)
    for i in range(len(w)):
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:, i] = (r > 0) & (u[:, i] < w[i] * table[i + 1, np.maximum(r - 1, 0)] / table[i, r])
        r = r - out[:, i]
    return out


def _fresh(rng: Gen) -> np.ndarray:
    """One label set from the base law (cardinality, then weighted findings)."""
    k = min(int(np.searchsorted(_CUM_K, rng.random(), side="right")), len(CARDINALITY) - 1)
    return _weighted_sets(rng, WEIGHTS, _TABLE, [k])[0]


def _names(row: np.ndarray) -> tuple[str, ...]:
    return tuple(FINDINGS[i] for i in np.flatnonzero(row)) or (NO_FINDING,)


def sample_labels(rng: Gen, n: int) -> list[tuple[str, ...]]:
    """Draw n independent label sets: cardinality first, then weighted findings without replacement.

    Exposed so the prevalence/cardinality calibration can be tested on many draws in milliseconds.
    """
    k = rng.choice(len(CARDINALITY), size=n, p=CARDINALITY)
    return [_names(row) for row in _weighted_sets(rng, WEIGHTS, _TABLE, k)]


def sample_patient_labels(rng: Gen, n_images: int) -> list[tuple[str, ...]]:
    """Label sets of one patient's follow-ups: a Markov chain whose stationary law is the base one.

    A follow-up repeats the previous set, or keeps its chronic findings (Cardiomegaly, Emphysema,
    Fibrosis, Hernia, Pleural_Thickening) and redraws the acute ones from their exact conditional
    law, or is a fresh draw. Each kernel preserves the base law, so per-image marginals stay
    exact while findings persist within a patient as in the real data.
    """
    current, rows = _fresh(rng), []
    for index in range(n_images):
        u = rng.random() if index else 0.0
        if u >= P_REPEAT + P_KEEP_CHRONIC:
            current = _fresh(rng)
        elif u >= P_REPEAT:
            n_chronic = int((current & CHRONIC).sum())
            a = np.arange(len(CARDINALITY) - n_chronic)  # acute count, given the chronic set
            p = CARDINALITY[a + n_chronic] * _TABLE_ACUTE[0, a] / _TABLE[0, a + n_chronic]
            k = min(int(np.searchsorted(np.cumsum(p / p.sum()), rng.random(), side="right")), len(a) - 1)
            current = current & CHRONIC
            current[~CHRONIC] = _weighted_sets(rng, WEIGHTS[~CHRONIC], _TABLE_ACUTE, [k])[0]
        rows.append(_names(current))
    return rows


def report_noise(labels: list[tuple[str, ...]], rng: Gen, missed: float, spurious: float) -> list[tuple[str, ...]]:
    """The label sets a report-mining NLP would have written for images showing `labels`.

    Each true finding is left out with probability `missed`, each of the other findings is added
    with probability `spurious`; an image left with none is "No Finding". Exactly one uniform
    per image and finding is drawn whatever the labels, so the rest of `rng`'s stream does not
    depend on them, and 0/0 returns the sets unchanged (names in FINDINGS order, as drawn).
    """
    truth = np.array([[name in row for name in FINDINGS] for row in labels], dtype=bool).reshape(-1, len(FINDINGS))
    u = rng.random(truth.shape)
    noisy = np.where(truth, u >= missed, u < spurious)
    return [_names(row) for row in noisy]
