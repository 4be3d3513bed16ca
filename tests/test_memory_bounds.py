"""evaluate@ and explain@ keep a batch of a memory-mapped split resident, not the split (issue 16, point 3).

    PYTHONPATH=src python -m pytest -q tests/test_memory_bounds.py

Pages of a memory-mapped file that a process has read count in its resident memory until they
are unmapped; reading NIH's 25,596 test images at 224 px would leave 1.3 GB resident. Inference,
embeddings and Grad-CAM hand every batch's pages back (`release_mapped_pages`). The tests read the
kernel's own count of a mapping's resident pages (/proc/self/smaps) while a real model runs, and
check that the scores, embeddings and maps equal those computed from the same pixels in memory.
Retrieval ranks its queries in smaller blocks than it multiplies them: its result must not move
with the block sizes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr14.data.loader import prepare_batch
from cxr14.evaluation import embeddings
from cxr14.evaluation.embeddings import extract_embeddings, retrieval_metrics
from cxr14.evaluation.explain import batched_grad_cam
from cxr14.evaluation.gradcam import find_taps, grad_cam
from cxr14.inference import predict, release_mapped_pages
from cxr14.labels import LABELS, NUM_CLASSES
from cxr14.models import ModelBundle, build_model

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads resident pages from /proc/self/smaps (Linux)"
)

SIDE = 256  # 64 KiB per image: a batch spans whole pages
IMAGES = 256  # a 16 MiB file
# The page cache may hold a file in large folios (ext4 on recent kernels), mapped whole when one
# of their pages is read: up to a few MiB resident beyond the batch, however large the file.
FOLIO_ALLOWANCE = 4 * 1024 * 1024
BATCH = 16
MODEL_SIZE = 32
CPU = torch.device("cpu")


def resident_bytes(path: Path) -> int:
    """Resident bytes of this process's mappings of `path` (the kernel's Rss lines in /proc/self/smaps)."""
    total, inside = 0, False
    target = str(path.resolve())
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and not fields[0].endswith(":"):  # a mapping's header
            inside = len(fields) >= 6 and fields[5] == target
        elif inside and fields[:1] == ["Rss:"]:
            total += int(fields[1]) * 1024
    return total


@pytest.fixture
def mapped(tmp_path) -> tuple[Path, np.ndarray]:
    """A split-like uint8 [IMAGES, SIDE, SIDE] .npy file of noise, memory-mapped read-only."""
    path = tmp_path / "test.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, size=(IMAGES, SIDE, SIDE), dtype=np.uint8))
    return path, np.load(path, mmap_mode="r")


@pytest.fixture
def bundle():
    torch.manual_seed(0)
    return build_model("cnn", NUM_CLASSES, MODEL_SIZE, pretrained=False)


@contextmanager
def recording_resident(bundle, path: Path) -> Iterator[list[int]]:
    """Resident bytes of `path`, recorded each time the model's first convolution runs."""
    seen: list[int] = []
    first = next(module for module in bundle.model.modules() if isinstance(module, torch.nn.Conv2d))
    hook = first.register_forward_pre_hook(lambda module, args: seen.append(resident_bytes(path)))
    try:
        yield seen
    finally:
        hook.remove()


def assert_batch_bounded(seen: list[int], batch_rows: int) -> None:
    """At every forward pass, at most a batch plus what the kernel maps around it is resident."""
    file_bytes = IMAGES * SIDE * SIDE
    assert len(seen) >= 3
    assert max(seen) <= batch_rows * SIDE * SIDE + FOLIO_ALLOWANCE < file_bytes / 2, (max(seen), file_bytes)


def test_release_drops_the_pages_read_and_keeps_the_bytes(mapped):
    path, images = mapped
    total = int(images.sum(dtype=np.int64))  # every page read
    assert resident_bytes(path) >= images.nbytes
    release_mapped_pages(images[3:5])  # a view finds the map it belongs to
    assert resident_bytes(path) == 0
    assert int(images.sum(dtype=np.int64)) == total  # read again from the page cache, same bytes


def test_release_leaves_copy_on_write_and_in_memory_arrays_alone(mapped):
    path, _ = mapped
    private = np.load(path, mmap_mode="c")
    private[0, 0, 0] = 255 - private[0, 0, 0]  # this process's own copy of the page
    changed = int(private[0, 0, 0])
    release_mapped_pages(private)
    assert int(private[0, 0, 0]) == changed
    in_memory = np.array(private)
    release_mapped_pages(in_memory)
    assert int(in_memory[0, 0, 0]) == changed


def test_predict_keeps_a_batch_resident_and_scores_as_in_memory(mapped, bundle):
    path, images = mapped
    labels = np.zeros((IMAGES, NUM_CLASSES), np.float32)
    with recording_resident(bundle, path) as seen:
        scores = predict(bundle, images, labels, BATCH, MODEL_SIZE, CPU)
    assert_batch_bounded(seen, BATCH)
    expected = predict(bundle, np.array(images), labels, BATCH, MODEL_SIZE, CPU)
    assert scores.shape == (IMAGES, NUM_CLASSES) and np.array_equal(scores, expected)


@pytest.mark.parametrize("logits", [False, True])
def test_predict_equals_the_batches_forward_passes_in_row_order(mapped, bundle, logits):
    """The one output array holds each batch's scores (or logits) where that batch's rows are."""
    _, images = mapped
    labels = np.zeros((IMAGES, NUM_CLASSES), np.float32)
    batch = 24  # 256 rows: ten full batches and a last one of 16
    got = predict(bundle, images, labels, batch, MODEL_SIZE, CPU, logits=logits)
    expected = []
    with torch.no_grad():
        for start in range(0, IMAGES, batch):
            pixels = torch.from_numpy(np.array(images[start : start + batch])).unsqueeze(1)
            out = bundle.model(prepare_batch(pixels, bundle.in_chans, bundle.mean, bundle.std, MODEL_SIZE)).float()
            expected.append(out if logits else torch.sigmoid(out))
    assert got.dtype == np.float32 and np.array_equal(got, torch.cat(expected).numpy())
    none = predict(bundle, images[:0], labels[:0], batch, MODEL_SIZE, CPU, logits=logits)
    assert none.shape == (0, NUM_CLASSES) and none.dtype == np.float32


def test_embeddings_keep_a_batch_resident_and_equal_in_memory(mapped, bundle):
    path, images = mapped
    taps = find_taps(bundle, MODEL_SIZE, CPU, seed=0)
    with recording_resident(bundle, path) as seen:
        vectors = extract_embeddings(bundle, taps, images, BATCH, MODEL_SIZE, CPU)
    assert_batch_bounded(seen, BATCH)
    expected = extract_embeddings(bundle, taps, np.array(images), BATCH, MODEL_SIZE, CPU)
    assert vectors.shape == (IMAGES, taps.embedding_dim) and np.array_equal(vectors, expected)


def test_embeddings_of_a_model_without_timm_interface_equal_its_classifier_inputs(mapped):
    """The hook path (no forward_features/forward_head): each batch's classifier input, in row order."""
    path, images = mapped
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(24, NUM_CLASSES),
    )
    handmade = ModelBundle(name="handmade", model=model, in_chans=1, mean=(0.0,), std=(1.0,))
    taps = find_taps(handmade, MODEL_SIZE, CPU)
    assert not taps.from_interface
    with recording_resident(handmade, path) as seen:
        vectors = extract_embeddings(handmade, taps, images, BATCH, MODEL_SIZE, CPU)
    assert_batch_bounded(seen, BATCH)
    inputs: list[torch.Tensor] = []
    hook = model[4].register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    with torch.no_grad():
        for start in range(0, IMAGES, BATCH):
            pixels = torch.from_numpy(np.array(images[start : start + BATCH])).unsqueeze(1)
            model(prepare_batch(pixels, 1, (0.0,), (1.0,), MODEL_SIZE))
    hook.remove()
    assert np.array_equal(vectors, torch.cat(inputs).numpy())
    empty = extract_embeddings(handmade, taps, images[:0], BATCH, MODEL_SIZE, CPU)
    assert empty.shape == (0, taps.embedding_dim) and empty.dtype == np.float32


def test_grad_cam_keeps_a_batch_resident_and_equals_in_memory(mapped, bundle):
    path, images = mapped
    taps = find_taps(bundle, MODEL_SIZE, CPU, seed=0)
    rows = list(range(0, IMAGES, 2))  # rows spread over the whole file
    findings = [LABELS[row % 14] for row in rows]
    with recording_resident(bundle, path) as seen:
        maps, probabilities = batched_grad_cam(bundle, taps, images, rows, findings, 8, MODEL_SIZE, CPU, "test")
    # Rows two apart: a batch of 8 spans 16 rows of the file.
    assert_batch_bounded(seen, 16)
    expected = batched_grad_cam(bundle, taps, np.array(images), rows, findings, 8, MODEL_SIZE, CPU, "test")
    assert maps.shape == (len(rows), SIDE, SIDE)
    assert np.array_equal(maps, expected[0]) and np.array_equal(probabilities, expected[1])
    # Each batch's maps are those of grad_cam on that batch alone, in the order of the rows.
    part = grad_cam(
        bundle, taps, np.array(images[rows[8:16]]), [LABELS.index(f) for f in findings[8:16]], MODEL_SIZE, CPU
    )
    assert np.array_equal(maps[8:16], part[0]) and np.array_equal(probabilities[8:16], part[1])
    none = batched_grad_cam(bundle, taps, images, [], [], 8, MODEL_SIZE, CPU, "test")
    assert none[0].shape == (0, SIDE, SIDE) and none[0].dtype == np.float32 and none[1].shape == (0,)


def reference_retrieval(vectors: np.ndarray, labels: np.ndarray, patients: np.ndarray) -> dict:
    """The definition, one query at a time over the whole [N, N] similarity matrix."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    hits_1, hits_5, precisions, chance = [], [], [], []
    for query in range(len(vectors)):
        gallery = np.flatnonzero(patients != patients[query])
        ranked = gallery[np.argsort(-similarity[query, gallery], kind="stable")]  # ties: image order
        hits = (labels[ranked] & labels[query]).any(axis=1)
        if hits.any():
            positions = np.flatnonzero(hits) + 1
            precisions.append(np.mean(np.arange(1, len(positions) + 1) / positions))
            hits_1.append(float(hits[0]))
            hits_5.append(float(hits[:5].any()))
            chance.append(hits.sum() / len(gallery))
    return {
        "precision_at_1": float(np.mean(hits_1)),
        "recall_at_5": float(np.mean(hits_5)),
        "mean_average_precision": float(np.mean(precisions)),
        "chance_precision": float(np.mean(chance)),
        "queries": len(precisions),
    }


def tied_retrieval_data(n: int = 61) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors in {-1, 1}^4: cosine similarities are exact multiples of 1/4, so most are tied and
    any block that ranked a tie out of image order would change the result."""
    rng = np.random.default_rng(3)
    vectors = rng.choice([-1.0, 1.0], size=(n, 4)).astype(np.float32)
    labels = rng.random((n, NUM_CLASSES)) < 0.15
    patients = (np.arange(n) // 3).astype(str)  # three images per patient
    return vectors, labels, patients


@pytest.mark.parametrize(("query_chunk", "rank_chunk"), [(512, 64), (512, 5), (8, 3), (7, 7), (2, 1)])
def test_retrieval_equals_the_unblocked_definition_whatever_the_blocks(monkeypatch, query_chunk, rank_chunk):
    vectors, labels, patients = tied_retrieval_data()
    monkeypatch.setattr(embeddings, "QUERY_CHUNK", query_chunk)
    monkeypatch.setattr(embeddings, "RANK_CHUNK", rank_chunk)
    assert retrieval_metrics(vectors, labels, patients) == reference_retrieval(vectors, labels, patients)


def test_retrieval_rank_blocks_do_not_change_float_results(monkeypatch):
    """Continuous embeddings, one product per QUERY_CHUNK queries as before: only the ranking
    blocks vary, and every number is the same to the last bit."""
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((150, 24)).astype(np.float32)
    labels = rng.random((150, NUM_CLASSES)) < 0.2
    patients = (np.arange(150) // 4).astype(str)
    monkeypatch.setattr(embeddings, "QUERY_CHUNK", 64)  # 64, 64, 22 rows
    results = []
    for rank_chunk in (64, 10, 1):
        monkeypatch.setattr(embeddings, "RANK_CHUNK", rank_chunk)
        results.append(retrieval_metrics(vectors, labels, patients))
    assert results[0] == results[1] == results[2]
    assert results[0]["queries"] > 100
