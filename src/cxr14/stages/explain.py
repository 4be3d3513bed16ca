"""Stage logic of `explain@<model>`: Grad-CAM overlays, box localisation, embeddings.

    record = explain_model(cfg, "cnn", Path("data/cache"), Path("models/cnn"), boxes)
    write_explanation(record, boxes, Path("metrics/explain/cnn.json"), Path("metrics/explain/cnn"))

The overlay images are the same for every model (a function of the test split, the boxes and
the seed), so the report can put models side by side. With boxes (NIH's BBox_List_2017.csv,
or the phantom's), every boxed test image is scored: pointing game and IoU per finding, next
to the score of always pointing at the image centre.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr14 import tracking
from cxr14.config import Config, ExplainConfig
from cxr14.data.cache import open_split, split_labels
from cxr14.evaluation.embeddings import extract_embeddings, finding_groups, retrieval_metrics, tsne_layout
from cxr14.evaluation.explain import batched_grad_cam, select_gradcam_images
from cxr14.evaluation.gradcam import ModelTaps, find_taps, localisation_scores
from cxr14.inference import load_trained, select_device
from cxr14.io import atomic_write_json, atomic_write_text
from cxr14.models import ModelBundle
from cxr14.reporting.figures import gradcam_figure, save_figures, tsne_figure

log = logging.getLogger(__name__)


def explain_model(cfg: Config, model_name: str, cache_dir: Path, model_dir: Path, boxes: pd.DataFrame) -> dict:
    """Grad-CAM of the fixed overlay set, localisation over all boxes, embeddings → retrieval and t-SNE."""
    settings = cfg.explain
    device = select_device(cfg.train.device)
    bundle, image_size = load_trained(model_dir, model_name, device)
    images, index = open_split(cache_dir, "test")
    labels = split_labels(index)
    taps = find_taps(bundle, image_size, device, seed=cfg.seed)
    log.info(
        "%s: Grad-CAM on %s (%s), embeddings from the input of %s (%d-d)",
        model_name,
        taps.feature_layer,
        taps.layout,
        taps.classifier_layer,
        taps.embedding_dim,
    )

    selection = select_gradcam_images(index, labels, boxes, settings.gradcam_images, cfg.seed)
    overlay_maps, overlay_probabilities = batched_grad_cam(
        bundle,
        taps,
        images,
        selection["row"].tolist(),
        selection["finding"].tolist(),
        settings.batch_size,
        image_size,
        device,
        "Grad-CAM",
    )
    selection = selection.assign(probability=overlay_probabilities.round(4))

    localisation = None
    if len(boxes):
        localisation = _box_localisation(bundle, taps, images, boxes, settings, image_size, device)

    vectors = extract_embeddings(bundle, taps, images, settings.batch_size, image_size, device)
    patient_ids = index["patient_id"].astype(str).to_numpy()
    retrieval = retrieval_metrics(vectors, labels, patient_ids)
    _log_results(model_name, localisation, retrieval)
    return {
        "model": model_name,
        "taps": {
            "feature_layer": taps.feature_layer,
            "layout": taps.layout,
            "classifier_layer": taps.classifier_layer,
            "embedding_dim": taps.embedding_dim,
        },
        "retrieval": retrieval,
        "localisation": localisation,
        "gradcam": selection,
        "gradcam_maps": overlay_maps,
        "gradcam_images": images[selection["row"].to_numpy()],
        "tsne": _tsne_table(vectors, index, labels, settings, cfg.seed),
        "test_images": len(index),
    }


def _log_results(model_name: str, localisation: dict | None, retrieval: dict) -> None:
    """The stage's closing lines: localisation beside its centre baseline, retrieval beside chance."""
    if localisation is not None:
        overall = localisation["overall"]
        log.info(
            "%s: pointing game %.3f (centre baseline %.3f) over %d boxes, %d empty maps; mean IoU %.3f",
            model_name,
            overall["pointing_game"],
            overall["centre_baseline"],
            overall["boxes"],
            overall["empty_maps"],
            overall["mean_iou"],
        )
    log.info(
        "%s: retrieval P@1 %.3f (chance %.3f), mAP %.3f over %d queries",
        model_name,
        retrieval["precision_at_1"],
        retrieval["chance_precision"],
        retrieval["mean_average_precision"],
        retrieval["queries"],
    )


def _box_localisation(
    bundle: ModelBundle,
    taps: ModelTaps,
    images: np.ndarray,
    boxes: pd.DataFrame,
    settings: ExplainConfig,
    image_size: int,
    device: torch.device,
) -> dict:
    """Grad-CAM once per boxed (image, finding) pair, scored against every box of the pair."""
    pairs = boxes[["row", "finding"]].drop_duplicates().reset_index(drop=True)
    pair_maps, _ = batched_grad_cam(
        bundle,
        taps,
        images,
        pairs["row"].astype(int).tolist(),
        pairs["finding"].tolist(),
        settings.batch_size,
        image_size,
        device,
        "localisation",
    )
    lookup = {(int(row), finding): position for position, (row, finding) in enumerate(pairs.itertuples(index=False))}
    box_maps = np.stack(
        [pair_maps[lookup[(int(row), finding)]] for row, finding in zip(boxes["row"], boxes["finding"])]
    )
    return localisation_scores(box_maps, boxes, settings.cam_threshold)


def _tsne_table(
    vectors: np.ndarray, index: pd.DataFrame, labels: np.ndarray, settings: ExplainConfig, seed: int
) -> pd.DataFrame:
    """The t-SNE map of a seeded subsample: image id, x, y and finding group per point."""
    xy, tsne_rows = tsne_layout(vectors, settings.tsne_points, settings.tsne_perplexity, seed)
    return pd.DataFrame(
        {
            "image_id": index["image_id"].to_numpy()[tsne_rows],
            "x": xy[:, 0].round(4),
            "y": xy[:, 1].round(4),
            "group": finding_groups(labels[tsne_rows]),
        }
    )


def _caption(row) -> str:
    return f"{row.image_id}\n{row.finding}: p = {row.probability:.2f}"


def write_explanation(record: dict, boxes: pd.DataFrame, summary_path: Path, figure_dir: Path) -> list[Path]:
    """metrics/explain/<model>.json + gradcam.png/.csv and tsne.png/.csv in `figure_dir`; returns the figures."""
    name = record["model"]
    selection: pd.DataFrame = record["gradcam"]
    tile_boxes = [
        [
            (box.x, box.y, box.w, box.h)
            for box in boxes[(boxes["row"] == row.row) & (boxes["finding"] == row.finding)].itertuples()
        ]
        for row in selection.itertuples()
    ]
    tsne: pd.DataFrame = record["tsne"]
    figures = save_figures(
        {
            "gradcam.png": gradcam_figure(
                record["gradcam_images"],
                record["gradcam_maps"],
                [_caption(row) for row in selection.itertuples()],
                tile_boxes,
                f"{name}: Grad-CAM on layer '{record['taps']['feature_layer']}'"
                + (" (green: ground-truth boxes)" if len(boxes) else ""),
            ),
            "tsne.png": tsne_figure(
                tsne[["x", "y"]].to_numpy(),
                tsne["group"].tolist(),
                f"{name}: t-SNE of {record['taps']['embedding_dim']}-d test embeddings",
            ),
        },
        figure_dir,
    )
    atomic_write_text(figure_dir / "gradcam.csv", selection.to_csv(index=False))
    atomic_write_text(figure_dir / "tsne.csv", tsne.to_csv(index=False))
    summary = {key: record[key] for key in ("model", "taps", "retrieval", "localisation", "test_images")}
    summary["tsne_points"] = len(tsne)
    atomic_write_json(summary_path, summary)
    return list(figures.values())


def log_explanation(record: dict, figures: list[Path], run_file: Path) -> None:
    """Retrieval and localisation numbers plus the figures, into the model's training run."""
    metrics = {
        f"retrieval_{key}": value
        for key, value in record["retrieval"].items()
        if key != "queries" and value is not None
    }
    overall = (record["localisation"] or {}).get("overall") or {}
    metrics.update({f"localisation_{key}": value for key, value in overall.items() if key != "boxes"})
    with tracking.model_run(record["model"], run_id=tracking.recorded_run_id(run_file)):
        tracking.log_metrics(metrics)
        for figure in figures:
            tracking.log_artifact(figure, "figures")
