"""Pure parts of `explain@<model>`: which test images get a Grad-CAM overlay, batched Grad-CAM.

    selection = select_gradcam_images(index, labels, boxes, count=16, seed=0)
    maps, probabilities = batched_grad_cam(bundle, taps, images, rows, findings, 32, 224, device, "Grad-CAM")

The overlay images are the same for every model (a function of the test split, the boxes and
the seed), so the report can put models side by side. The stage (loading the model, writing the
figures, logging) is `cxr14.stages.explain`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cxr14.evaluation.gradcam import grad_cam
from cxr14.inference import release_mapped_pages
from cxr14.io import progress
from cxr14.labels import LABEL_INDEX, LABELS, NO_FINDING


def select_gradcam_images(
    index: pd.DataFrame, labels: np.ndarray, boxes: pd.DataFrame, count: int, seed: int
) -> pd.DataFrame:
    """Rows of the test split to overlay, with the finding whose map is drawn.

    Boxed images first (one per finding in turn, so several findings show), then images
    positive for the most frequent findings in turn; "No Finding" is never chosen.

    Returns:
        columns row, image_id, finding; at most `count` rows, no image twice.
    """
    rng = np.random.default_rng([seed, 6])
    chosen: list[tuple[int, str]] = []
    used: set[int] = set()

    def take_round_robin(candidates: dict[str, list[int]]) -> None:
        queues = {name: list(rng.permutation(rows)) for name, rows in candidates.items() if rows}
        while len(chosen) < count and any(queues.values()):
            for name, queue in queues.items():
                while queue and int(queue[0]) in used:
                    queue.pop(0)
                if queue and len(chosen) < count:
                    row = int(queue.pop(0))
                    chosen.append((row, name))
                    used.add(row)

    if len(boxes):
        take_round_robin({name: sorted(set(boxes.loc[boxes["finding"] == name, "row"].astype(int))) for name in LABELS})
    prevalence = labels.sum(axis=0)
    by_frequency = [LABELS[c] for c in np.argsort(-prevalence, kind="stable") if LABELS[c] != NO_FINDING]
    take_round_robin({name: list(np.flatnonzero(labels[:, LABEL_INDEX[name]])) for name in by_frequency})
    frame = pd.DataFrame(chosen, columns=["row", "finding"])
    frame.insert(1, "image_id", index["image_id"].to_numpy()[frame["row"].to_numpy()] if len(frame) else [])
    return frame


def batched_grad_cam(
    bundle,
    taps,
    images: np.ndarray,
    rows: list[int],
    findings: list[str],
    batch_size: int,
    image_size: int,
    device: torch.device,
    desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM for (row, finding) pairs, batched: maps float32 [len(rows), S, S], probabilities [len(rows)].

    Each batch's maps go straight into the output arrays, and a memory-mapped split's pages are
    handed back after each batch, so memory holds the maps and one batch of images.
    """
    side = images.shape[-1]
    maps, probabilities = np.zeros((len(rows), side, side), np.float32), np.zeros(len(rows), np.float32)
    for start in progress(range(0, len(rows), batch_size), desc=desc, unit="batch", leave=False):
        stop = start + batch_size
        maps[start:stop], probabilities[start:stop] = grad_cam(
            bundle,
            taps,
            images[rows[start:stop]],
            [LABEL_INDEX[name] for name in findings[start:stop]],
            image_size,
            device,
        )
        release_mapped_pages(images)
    return maps, probabilities
