"""Penultimate embeddings of the test split: retrieval quality and a t-SNE map (design note 002).

    vectors = extract_embeddings(bundle, taps, images, batch_size=64, image_size=128, device=cpu)
    scores = retrieval_metrics(vectors, labels, patient_ids)   # P@1, R@5, mAP, chance level
    xy, rows = tsne_layout(vectors, max_points=2000, perplexity=30, seed=42)

The embedding is what the classifier Linear reads: ``forward_head(features, pre_logits=True)``
of timm's interface, which every registered and timm model has (for any other model, the input of
the Linear found by cxr14.evaluation.gradcam.find_taps), so every architecture is compared at the
same place.
Retrieval uses cosine similarity; an image is relevant to a query when the two share at least
one of the 15 labels ("No Finding" included, so two normal images match). Images of the
query's own patient are left out of its gallery: follow-ups of one patient look alike, and
counting them would reward recognising patients rather than findings.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cxr14.data.loader import prepare_batch
from cxr14.errors import InputDataError
from cxr14.evaluation.gradcam import ModelTaps, has_model_interface
from cxr14.inference import release_mapped_pages
from cxr14.io import progress
from cxr14.labels import LABELS
from cxr14.models import ModelBundle

QUERY_CHUNK = 512  # queries whose similarities one matrix product computes (chunk x N float64)
RANK_CHUNK = 64  # of those, queries sorted at once: the sort's index matrix is RANK_CHUNK x N
RECALL_AT = 5


@torch.no_grad()
def extract_embeddings(
    bundle: ModelBundle, taps: ModelTaps, images: np.ndarray, batch_size: int, image_size: int, device: torch.device
) -> np.ndarray:
    """float32 [N, embedding_dim]: the input of the classifier for each cache image, in row order.

    Each batch's rows go straight into the one output array, and a memory-mapped split's pages are
    handed back after each batch, so memory holds the output and one batch, whatever N is.
    """
    model: Any = bundle.model  # timm's forward_features/forward_head are not on nn.Module's type
    model.eval()
    captured: list[torch.Tensor] = []
    interface = has_model_interface(model)
    hook = None
    if not interface:
        classifier: nn.Module = dict(model.named_modules())[taps.classifier_layer]
        hook = classifier.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach().float().cpu()))
    vectors = None
    try:
        for start in progress(range(0, len(images), batch_size), desc="embeddings", unit="batch", leave=False):
            batch = torch.from_numpy(np.array(images[start : start + batch_size])).unsqueeze(1).to(device)
            inputs = prepare_batch(batch, bundle.in_chans, bundle.mean, bundle.std, image_size)
            if interface:
                embedding = model.forward_head(model.forward_features(inputs), pre_logits=True)
                captured.append(embedding.detach().float().cpu())
            else:
                model(inputs)
            rows = torch.cat(captured).flatten(1).numpy()
            captured.clear()
            if vectors is None:  # the width is that of the first batch's embeddings
                vectors = np.empty((len(images), rows.shape[1]), np.float32)
            vectors[start : start + len(rows)] = rows
            release_mapped_pages(images)  # resident memory stays at a batch of a memory-mapped split
    finally:
        if hook is not None:
            hook.remove()
    return np.zeros((0, taps.embedding_dim), np.float32) if vectors is None else vectors


def retrieval_metrics(vectors: np.ndarray, labels: np.ndarray, patient_ids: np.ndarray) -> dict:
    """P@1, R@5 and mAP of cosine-similarity retrieval, each query against all other patients' images.

    Args:
        vectors: [N, D] embeddings.
        labels: [N, 15] multi-hot.
        patient_ids: [N]; a query's own patient is excluded from its gallery.

    Returns:
        precision_at_1: share of queries whose nearest image is relevant.
        recall_at_5: share of queries with a relevant image among the 5 nearest (Recall@K as
            used for metric learning).
        mean_average_precision: mean over queries of the average precision of the full ranking.
        chance_precision: mean share of relevant images in a gallery (what random embeddings score
            on P@1 and, in expectation, on mAP).
        queries: queries with at least one relevant image (the others are not scored).

    Memory: the similarities of QUERY_CHUNK queries ([QUERY_CHUNK, N] float64, 105 MB for NIH's
    25,596 test images), ranked RANK_CHUNK queries at a time; nothing [N, N].
    """
    labels = np.asarray(labels, bool)
    patient_ids = np.asarray(patient_ids).astype(str)
    n = len(vectors)
    if labels.shape != (n, len(LABELS)) or patient_ids.shape != (n,):
        raise ValueError(f"retrieval_metrics: {n} vectors, labels {labels.shape}, patient ids {patient_ids.shape}")
    unit = _unit_rows(vectors)
    _, patient_codes = np.unique(patient_ids, return_inverse=True)
    label_matrix = labels.astype(np.float32)
    scores: dict[str, list[float]] = {"hits_at_1": [], "hits_at_k": [], "average_precisions": [], "chance": []}
    for start in range(0, n, QUERY_CHUNK):
        stop = min(n, start + QUERY_CHUNK)
        # Always QUERY_CHUNK rows per product: BLAS may round a row differently in a product of
        # another height (a single row takes another code path), and ties in the ranking would move.
        similarity = unit[start:stop] @ unit.T
        for first in range(start, stop, RANK_CHUNK):
            last = min(stop, first + RANK_CHUNK)
            _score_queries(similarity[first - start : last - start], label_matrix, patient_codes, first, scores)
        del similarity
    return _retrieval_summary(scores["hits_at_1"], scores["hits_at_k"], scores["average_precisions"], scores["chance"])


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """float64 rows scaled to length 1 (zero rows stay zero)."""
    vectors = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _score_queries(
    similarity: np.ndarray, label_matrix: np.ndarray, patient_codes: np.ndarray, start: int, scores: dict
) -> None:
    """Rank the gallery of queries start, start + 1, ... (rows of `similarity`, overwritten) and
    append each scored query's hit at 1, hit within RECALL_AT, average precision and chance level."""
    stop = start + len(similarity)
    relevant = (label_matrix[start:stop] @ label_matrix.T) > 0  # exact: sums of at most 15 ones
    same_patient = patient_codes[start:stop, None] == patient_codes[None, :]
    similarity[same_patient] = -np.inf  # ranked last, then dropped below
    np.negative(similarity, out=similarity)  # in place: ascending order = most similar first
    order = np.argsort(similarity, axis=1, kind="stable")
    ranked_relevant = np.take_along_axis(relevant, order, axis=1)
    gallery = (~same_patient).sum(axis=1)
    for row in range(stop - start):
        hits = ranked_relevant[row, : gallery[row]]
        total = int(hits.sum())
        if total == 0:
            continue
        positions = np.flatnonzero(hits) + 1
        scores["average_precisions"].append(float(np.mean(np.arange(1, total + 1) / positions)))
        scores["hits_at_1"].append(float(hits[0]))
        scores["hits_at_k"].append(float(hits[:RECALL_AT].any()))
        scores["chance"].append(total / gallery[row])


def _retrieval_summary(
    hits_at_1: list[float], hits_at_k: list[float], average_precisions: list[float], chance: list[float]
) -> dict:
    """Means over the scored queries (all None without one)."""
    if not average_precisions:
        return {
            "precision_at_1": None,
            "recall_at_5": None,
            "mean_average_precision": None,
            "chance_precision": None,
            "queries": 0,
        }
    return {
        "precision_at_1": float(np.mean(hits_at_1)),
        "recall_at_5": float(np.mean(hits_at_k)),
        "mean_average_precision": float(np.mean(average_precisions)),
        "chance_precision": float(np.mean(chance)),
        "queries": len(average_precisions),
    }


def finding_groups(labels: np.ndarray) -> list[str]:
    """One colour group per image: its single label, or "several findings"."""
    labels = np.asarray(labels, bool)
    return [LABELS[int(np.flatnonzero(row)[0])] if row.sum() == 1 else "several findings" for row in labels]


def tsne_layout(vectors: np.ndarray, max_points: int, perplexity: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE coordinates of at most `max_points` embeddings (a seeded subsample).

    Returns:
        (xy [M, 2], rows [M]) with rows the chosen indices into `vectors`, ascending.
    """
    from sklearn.manifold import TSNE

    n = len(vectors)
    rows = np.arange(n)
    if n > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))
    if len(rows) < 3:
        raise InputDataError(f"t-SNE needs at least 3 embeddings (test images), got {len(rows)}")
    # Perplexity must stay below the number of points; sklearn refuses otherwise.
    usable = min(perplexity, (len(rows) - 1) / 3)
    layout = TSNE(n_components=2, perplexity=usable, init="pca", random_state=seed, n_jobs=1)
    return layout.fit_transform(np.asarray(vectors[rows], np.float64)).astype(np.float32), rows
