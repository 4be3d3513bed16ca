"""The 15 ChestX-ray14 targets in one fixed order, and the `A|B` <-> multi-hot codec.

The order is the seed project's (design note 001): every cache index, checkpoint head and
metrics file uses it, so changing it invalidates all of them.

    >>> encode_findings("Effusion|Mass").nonzero()[0].tolist()
    [2, 8]
"""

from __future__ import annotations

import numpy as np

from cxr14.errors import Cxr14Error

LABELS: tuple[str, ...] = (
    "Cardiomegaly",
    "Emphysema",
    "Effusion",
    "Hernia",
    "Nodule",
    "Pneumothorax",
    "Atelectasis",
    "Pleural_Thickening",
    "Mass",
    "Edema",
    "Consolidation",
    "Infiltration",
    "Fibrosis",
    "Pneumonia",
    "No Finding",
)
NO_FINDING = "No Finding"
NUM_CLASSES = len(LABELS)
LABEL_INDEX: dict[str, int] = {name: index for index, name in enumerate(LABELS)}

# The four findings of the radiologist-adjudicated labels (Majkowska et al., Radiology 2020) and
# the NIH classes each one gathers (an image is positive if any component is; a model's score is
# the maximum of its components' probabilities). Why these components: cxr14.data.expert_labels.
EXPERT_FINDINGS: tuple[str, ...] = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
NIH_COMPONENTS: dict[str, tuple[str, ...]] = {
    "Fracture": (),  # no NIH class
    "Pneumothorax": ("Pneumothorax",),
    "Airspace opacity": ("Consolidation", "Infiltration", "Pneumonia"),
    "Nodule or mass": ("Nodule", "Mass"),
}


class UnknownFindingError(Cxr14Error, ValueError):
    """A finding name outside the 15-name vocabulary."""


def encode_findings(finding_labels: str, where: str = "") -> np.ndarray:
    """Turn one `Finding Labels` cell ("A|B") into a uint8 multi-hot vector.

    Args:
        finding_labels: names joined with `|`, as in Data_Entry_2017.csv.
        where: context for the error message (file and row), so a bad cell can be found.

    Raises:
        UnknownFindingError: a name is not one of LABELS; the message names it and `where`.
    """
    vector = np.zeros(NUM_CLASSES, dtype=np.uint8)
    names = [name.strip() for name in str(finding_labels).split("|")]
    for name in names:
        if name not in LABEL_INDEX:
            location = f" at {where}" if where else ""
            raise UnknownFindingError(f"unknown finding {name!r}{location}; valid names: {', '.join(LABELS)}")
        vector[LABEL_INDEX[name]] = 1
    if vector[LABEL_INDEX[NO_FINDING]] and vector.sum() > 1:
        location = f" at {where}" if where else ""
        raise UnknownFindingError(f"'No Finding' combined with findings{location}: {finding_labels!r}")
    return vector
