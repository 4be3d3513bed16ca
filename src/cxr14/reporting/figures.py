"""Every figure of the report, drawn with matplotlib (Agg) and saved as reproducible PNGs.

    save_figure(roc_pr_figure(targets, scores, "cnn"), Path("metrics/figures/cnn/roc_pr.png"))

Each function takes plain arrays or frames read from metrics/ (so a figure traces to its
numbers) and returns a Figure; `save_figure` writes it atomically with no timestamp or
version in the PNG, so the same numbers give the same bytes and DVC sees no change.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on a GPU node or in CI

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from cxr14.evaluation.metrics import micro_roc_points
from cxr14.io import atomic_write_bytes
from cxr14.labels import LABELS

DPI = 110


def save_figure(figure: Figure, path: Path) -> None:
    """PNG without metadata (matplotlib would stamp its version), written atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight")
    plt.close(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def save_figures(figures: dict[str, Figure], out_dir: Path) -> dict[str, Path]:
    """Save each figure as out_dir/<file name>; returns the paths by file name, in the same order."""
    paths = {}
    for file_name, figure in figures.items():
        save_figure(figure, out_dir / file_name)
        paths[file_name] = out_dir / file_name
    return paths


def _precision_recall(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    hits = positive[order].astype(np.float64)
    true_positives = np.cumsum(hits)
    precision = true_positives / np.arange(1, len(hits) + 1)
    recall = true_positives / max(hits.sum(), 1.0)
    return np.concatenate([[0.0], recall]), np.concatenate([[1.0], precision])


def _roc(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """[k, 2] (fpr, tpr) points, thinned as for dvc plots."""
    return np.asarray([[point["fpr"], point["tpr"]] for point in micro_roc_points(positive, scores)], np.float64)


def roc_pr_figure(targets: np.ndarray, scores: np.ndarray, title: str) -> Figure:
    """ROC and precision-recall curves per class (thin) and micro-averaged (thick) on the test split."""
    figure, (roc_axes, pr_axes) = plt.subplots(1, 2, figsize=(11, 4.6))
    colours = plt.get_cmap("tab20")
    for column, name in enumerate(LABELS):
        positive = targets[:, column].astype(bool)
        if positive.all() or not positive.any():
            continue  # a class without both outcomes has no curve
        points = _roc(positive, scores[:, column])
        roc_axes.plot(points[:, 0], points[:, 1], lw=0.8, color=colours(column), label=name)
        recall, precision = _precision_recall(positive, scores[:, column])
        pr_axes.plot(recall, precision, lw=0.8, color=colours(column))
    flat_targets, flat_scores = targets.ravel().astype(bool), scores.ravel()
    if flat_targets.any() and not flat_targets.all():
        points = _roc(flat_targets, flat_scores)
        roc_axes.plot(points[:, 0], points[:, 1], lw=2.4, color="black", label="micro average")
        recall, precision = _precision_recall(flat_targets, flat_scores)
        pr_axes.plot(recall, precision, lw=2.4, color="black")
        pr_axes.axhline(flat_targets.mean(), ls=":", color="grey", lw=1, label="prevalence (micro)")
    roc_axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    roc_axes.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"{title}: ROC (test)",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    pr_axes.set(
        xlabel="recall", ylabel="precision", title=f"{title}: precision-recall (test)", xlim=(0, 1), ylim=(0, 1.01)
    )
    roc_axes.legend(fontsize=6.5, loc="lower right", ncol=2)
    pr_axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    return figure


def training_figure(histories: dict[str, pd.DataFrame]) -> Figure:
    """Loss (train solid, validation dashed) and validation macro AUROC per epoch, one colour per model."""
    figure, (loss_axes, auroc_axes) = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("tab10")
    for index, (name, history) in enumerate(histories.items()):
        colour = colours(index % 10)
        loss_axes.plot(history["epoch"], history["train_loss"], color=colour, label=f"{name} train")
        loss_axes.plot(history["epoch"], history["val_loss"], color=colour, ls="--", label=f"{name} val")
        auroc_axes.plot(history["epoch"], history["val_macro_auroc"], color=colour, marker="o", ms=3, label=name)
    loss_axes.set(xlabel="epoch", ylabel="loss", title="training curves")
    auroc_axes.set(xlabel="epoch", ylabel="validation macro AUROC", title="model selection metric")
    loss_axes.legend(fontsize=7, ncol=2)
    auroc_axes.legend(fontsize=7)
    figure.tight_layout()
    return figure


def auroc_heatmap(table: pd.DataFrame) -> Figure:
    """Per-class test AUROC, findings x models (best model first); blank where undefined."""
    values = table.to_numpy(dtype=np.float64)
    figure, axes = plt.subplots(figsize=(1.6 + 1.1 * table.shape[1], 0.9 + 0.36 * table.shape[0]))
    image = axes.imshow(np.ma.masked_invalid(values), cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    axes.set_xticks(range(table.shape[1]), table.columns, rotation=30, ha="right", fontsize=8)
    axes.set_yticks(range(table.shape[0]), table.index, fontsize=8)
    for (row, column), value in np.ndenumerate(values):
        if value == value:
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axes, label="test AUROC", shrink=0.8)
    axes.set_title("Per-class test AUROC")
    figure.tight_layout()
    return figure


def roc_overlay(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Micro-averaged ROC and precision-recall of every model on one chart each."""
    figure, (roc_axes, pr_axes) = plt.subplots(1, 2, figsize=(11, 4.4))
    colours = plt.get_cmap("tab10")
    for index, (name, (targets, scores)) in enumerate(curves.items()):
        flat_targets, flat_scores = targets.ravel().astype(bool), scores.ravel()
        if not flat_targets.any() or flat_targets.all():
            continue
        points = _roc(flat_targets, flat_scores)
        roc_axes.plot(points[:, 0], points[:, 1], color=colours(index % 10), label=name)
        recall, precision = _precision_recall(flat_targets, flat_scores)
        pr_axes.plot(recall, precision, color=colours(index % 10), label=name)
    roc_axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    roc_axes.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, micro-averaged (test)")
    pr_axes.set(xlabel="recall", ylabel="precision", title="precision-recall, micro-averaged (test)", ylim=(0, 1.01))
    roc_axes.legend(fontsize=8)
    pr_axes.legend(fontsize=8)
    figure.tight_layout()
    return figure


def gradcam_figure(
    images: np.ndarray, cams: np.ndarray, captions: list[str], boxes: list[list[tuple]], title: str, columns: int = 4
) -> Figure:
    """Each test image with its Grad-CAM overlaid and its boxes (green), one tile each.

    The map's colour (jet) is blended in proportion to its value, so where the map is zero the
    radiograph shows unchanged; a map that is zero everywhere (no location raises the logit)
    says so in its caption.

    Args:
        images: uint8 [n, S, S].
        cams: float [n, S, S] in 0..1.
        captions: one line per tile (finding and score).
        boxes: per tile, (x, y, w, h) boxes in pixels.
    """
    count = len(images)
    rows = max(1, -(-count // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.05 * rows), squeeze=False)
    jet = plt.get_cmap("jet")
    for index, axes in enumerate(grid.ravel()):
        axes.axis("off")
        if index >= count:
            continue
        axes.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        overlay = jet(np.clip(cams[index], 0, 1))
        overlay[..., 3] = 0.55 * np.clip(cams[index], 0, 1)
        axes.imshow(overlay)
        for x, y, w, h in boxes[index]:
            axes.add_patch(Rectangle((x, y), w, h, fill=False, edgecolor="lime", lw=1.5))
        empty = "" if cams[index].max() > 0 else "\n(map zero: no positive evidence)"
        axes.set_title(captions[index] + empty, fontsize=7.5)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def tsne_figure(xy: np.ndarray, groups: list[str], title: str) -> Figure:
    """t-SNE map coloured by finding (images with one label), grey for images with several."""
    figure, axes = plt.subplots(figsize=(7.2, 5.6))
    colours = plt.get_cmap("tab20")
    groups_array = np.asarray(groups)
    several = groups_array == "several findings"
    axes.scatter(xy[several, 0], xy[several, 1], s=6, color="lightgrey", label="several findings")
    for index, name in enumerate(LABELS):
        chosen = groups_array == name
        if chosen.any():
            axes.scatter(xy[chosen, 0], xy[chosen, 1], s=7, color=colours(index), label=name)
    axes.set(title=title, xticks=[], yticks=[])
    axes.legend(fontsize=6.5, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    figure.tight_layout()
    return figure


def reliability_figure(before: dict, title: str, after: dict | None = None) -> Figure:
    """Observed positive rate against mean score per bin (all N x 15 test entries), with bin counts:
    the raw scores and, given `after`, the temperature-scaled ones beside them.

    `before` / `after` are `statistics.calibration` outputs binned alike (e.g. the "reliability"
    entries of `evaluation.calibration.calibrate`'s summary).
    """
    figure, (axes, count_axes) = plt.subplots(
        2, 1, figsize=(4.8, 5.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    axes.plot([0, 1], [0, 1], ls=":", color="grey", lw=1, label="perfect calibration")
    curves = [(before, "raw", "tab:blue")] + ([(after, "temperature-scaled", "tab:orange")] if after else [])
    width = before["bins"][0]["bin_high"] - before["bins"][0]["bin_low"]
    share = width / len(curves)
    for offset, (calibration, label, colour) in enumerate(curves):
        filled = [row for row in calibration["bins"] if row["count"]]
        axes.plot(
            [row["mean_score"] for row in filled],
            [row["observed_rate"] for row in filled],
            marker="o",
            color=colour,
            label=f"{label} (ECE {calibration['ece']:.3f})",
        )
        count_axes.bar(
            [row["bin_low"] + offset * share for row in calibration["bins"]],
            [row["count"] for row in calibration["bins"]],
            width=share,
            align="edge",
            color=colour,
            edgecolor="white",
        )
    axes.set(ylabel="observed positive rate", title=f"{title}: reliability (test)", xlim=(0, 1), ylim=(0, 1))
    axes.legend(fontsize=8, loc="upper left")
    count_axes.set(xlabel="predicted probability", ylabel="entries", yscale="log")
    figure.tight_layout()
    return figure
