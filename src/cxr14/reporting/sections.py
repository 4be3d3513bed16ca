"""The report's figure, explainability, embedding and reference sections.

    figures = draw_comparison_figures(ranked, predictions, histories, Path("metrics/report_figures"))
    lines = explain_lines(ranked, explanations) + figure_lines(ranked, figures, per_model, report_dir)

Numbers come from metrics/explain/<model>.json; per-model figures were drawn by the
evaluate@ and explain@ stages (and logged to each model's MLflow run); the comparison figures
are drawn here from metrics/details, metrics/predictions and metrics/curves.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cxr14.labels import LABELS
from cxr14.reporting.card import REFERENCES as CARD_REFERENCES
from cxr14.reporting.comparison import first_seed, truth_and_scores
from cxr14.reporting.figures import auroc_heatmap, roc_overlay, save_figures, training_figure
from cxr14.reporting.files import ReportError, per_model_files, per_model_json

# Per model, in this order: what each figure shows and which stage draws it.
MODEL_FIGURES = {
    "roc_pr.png": ("ROC and precision-recall per class", "evaluate"),
    "reliability.png": ("reliability diagram, raw and temperature-scaled", "evaluate"),
    "training.png": ("training curves", "evaluate"),
    "gradcam.png": ("Grad-CAM overlays", "explain"),
    "tsne.png": ("t-SNE map of the test embeddings", "explain"),
}

REFERENCES = [
    "Wang X. et al. ChestX-ray8: hospital-scale chest X-ray database and benchmarks on weakly-supervised "
    "classification and localization of common thorax diseases. CVPR 2017 (the data set and its bounding boxes).",
    "Selvaraju R. R. et al. Grad-CAM: visual explanations from deep networks via gradient-based localization. "
    "ICCV 2017.",
    "Zhang J. et al. Top-down neural attention by excitation backprop. ECCV 2016 / IJCV 2018 (the pointing game).",
    "Efron B., Tibshirani R. J. An introduction to the bootstrap. Chapman & Hall 1993 (percentile intervals; "
    "resampled by patient here).",
    "van der Maaten L., Hinton G. Visualizing data using t-SNE. JMLR 2008.",
    "Guo C. et al. On calibration of modern neural networks. ICML 2017 (ECE, reliability diagrams).",
    CARD_REFERENCES["majkowska"] + " (the radiologists' labels).",
    CARD_REFERENCES["seyyed"] + " (under-diagnosis).",
]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or value != value else f"{value:.{digits}f}"


def load_explanations(explain_dir: Path, models: list[str]) -> dict[str, dict]:
    """metrics/explain/<model>.json for every model (missing = error naming explain@<model>)."""
    return per_model_json(explain_dir, models, "explain")


def load_histories(curves_dir: Path, models: list[str]) -> dict[str, pd.DataFrame]:
    """metrics/curves/<model>.csv (per-epoch losses and validation AUROC) for every model."""
    return {name: pd.read_csv(path) for name, path in per_model_files(curves_dir, models, ".csv", "evaluate").items()}


def model_figure_paths(figure_dirs: dict[str, Path], models: list[str]) -> dict[str, dict[str, Path]]:
    """Per model, each figure of MODEL_FIGURES from the folder of the stage that draws it."""
    paths: dict[str, dict[str, Path]] = {}
    for name in models:
        paths[name] = {}
        for file_name, (_, stage) in MODEL_FIGURES.items():
            path = figure_dirs[stage] / name / file_name
            if not path.is_file():
                raise ReportError(f"{path}: no output of {stage}@{name}; run `dvc repro {stage}@{name}`")
            paths[name][file_name] = path
    return paths


def draw_comparison_figures(
    ranked: list[dict], predictions: dict[str, pd.DataFrame], histories: dict[str, pd.DataFrame], out_dir: Path
) -> dict[str, Path]:
    """AUROC heat-map, micro ROC/PR of all models, training curves of all models → PNGs in out_dir."""
    order = [record["model"] for record in ranked]
    table = pd.DataFrame(
        {record["model"]: [record["metrics"]["auroc"].get(name) for name in LABELS] for record in ranked},
        index=list(LABELS),
        dtype=float,
    )
    curves = {name: truth_and_scores(first_seed(predictions[name])) for name in order}
    return save_figures(
        {
            "auroc_heatmap.png": auroc_heatmap(table),
            "roc_pr_all.png": roc_overlay(curves),
            "training_all.png": training_figure({name: histories[name] for name in order}),
        },
        out_dir,
    )


def _image(path: Path, report_dir: Path, alt: str) -> str:
    return f"![{alt}]({Path(os.path.relpath(path, report_dir)).as_posix()})"


def comparison_figure_lines(figures: dict[str, Path], report_dir: Path) -> list[str]:
    return [
        "",
        "## Figures: all models",
        "",
        "Per-class test AUROC (rows: findings; blank: no positive in the test split), micro-averaged ROC and "
        "precision-recall curves, and the training curves the early stopping saw.",
        "",
        _image(figures["auroc_heatmap.png"], report_dir, "per-class AUROC heat-map"),
        "",
        _image(figures["roc_pr_all.png"], report_dir, "ROC and PR of all models"),
        "",
        _image(figures["training_all.png"], report_dir, "training curves of all models"),
    ]


def data_lines(split_summary: dict) -> list[str]:
    """Images, patients and positives per finding in each split (metrics/split.json)."""
    splits = ("train", "val", "test")
    lines = [
        "",
        "## Data and split",
        "",
        f"Split method `{split_summary['method']}`, by patient (no patient in two splits); "
        f"{split_summary['excluded_images']} images excluded by the view/one-per-patient filters, "
        f"{split_summary['dropped_missing_images']} metadata rows dropped for a missing image, "
        f"{split_summary['orphan_images']} images without a metadata row. Source: `metrics/split.json`.",
        "",
        "| | " + " | ".join(splits) + " |",
        "|---|" + "---:|" * len(splits),
        "| images | " + " | ".join(f"{split_summary[name]['images']:,}" for name in splits) + " |",
        "| patients | " + " | ".join(f"{split_summary[name]['patients']:,}" for name in splits) + " |",
    ]
    for label in LABELS:
        cells = [
            f"{split_summary[name]['positives'][label]:,} ({split_summary[name]['prevalence'][label]:.1%})"
            for name in splits
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def explain_lines(ranked: list[dict], explanations: dict[str, dict]) -> list[str]:
    """Retrieval table for every model, and the localisation tables when boxes were scored."""
    lines = [
        "",
        "## Embeddings: retrieval",
        "",
        "The embedding is the classifier's input (penultimate layer). Each test image queries every test "
        "image of other patients by cosine similarity; relevant = sharing at least one of the 15 labels. "
        "P@1: nearest image relevant; R@5: a relevant image among the 5 nearest; mAP: mean average "
        "precision of the full ranking; chance: share of relevant images in a gallery (what P@1 of random "
        "embeddings would be). Source: `metrics/explain/<model>.json`.",
        "",
        "| model | layer read | dim | P@1 | R@5 | mAP | chance | queries |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for record in ranked:
        summary = explanations[record["model"]]
        retrieval, taps = summary["retrieval"], summary["taps"]
        lines.append(
            f"| `{record['model']}` | `{taps['classifier_layer']}` input | {taps['embedding_dim']} | "
            f"{_fmt(retrieval['precision_at_1'])} | {_fmt(retrieval['recall_at_5'])} | "
            f"{_fmt(retrieval['mean_average_precision'])} | {_fmt(retrieval['chance_precision'])} | "
            f"{retrieval['queries']} |"
        )
    scored = [record for record in ranked if explanations[record["model"]].get("localisation")]
    lines += ["", "## Explainability: Grad-CAM localisation", ""]
    if not scored:
        lines.append(
            "No bounding boxes for the test split (NIH's `BBox_List_2017.csv` absent), so no "
            "localisation score; the Grad-CAM overlays below are qualitative."
        )
        return lines
    return lines + _localisation_lines(scored, explanations)


def _localisation_lines(scored: list[dict], explanations: dict[str, dict]) -> list[str]:
    """The localisation tables (overall, then pointing game per finding) of the models with boxes scored."""
    first = explanations[scored[0]["model"]]["localisation"]
    lines = [
        "Grad-CAM of each box's finding on its image, on the layer named (the last spatial layer the "
        "logits depend on). Pointing game: the map's peak lies inside the box. IoU: the region where the map "
        f"is at least {first['cam_threshold']:.0%} of its peak against the box. Centre baseline: the pointing "
        "game of always pointing at the image centre. Empty maps: no location raises the finding's logit "
        "(Grad-CAM keeps only positive evidence); they count as misses with IoU 0.",
        "",
        "| model | Grad-CAM layer | boxes | pointing game | mean IoU | centre baseline | empty maps |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for record in scored:
        summary = explanations[record["model"]]
        overall = summary["localisation"]["overall"]
        lines.append(
            f"| `{record['model']}` | `{summary['taps']['feature_layer']}` | {overall['boxes']} | "
            f"{_fmt(overall['pointing_game'])} | {_fmt(overall['mean_iou'])} | "
            f"{_fmt(overall['centre_baseline'])} | {overall['empty_maps']} |"
        )
    findings = [name for name in LABELS if name in first["per_finding"]]
    header = "| finding | boxes | " + " | ".join(f"`{record['model']}`" for record in scored) + " | centre |"
    lines += ["", "Pointing game per finding:", "", header, "|---|---:|" + "---:|" * (len(scored) + 1)]
    for name in findings:
        cells = [
            _fmt(explanations[record["model"]]["localisation"]["per_finding"][name]["pointing_game"])
            for record in scored
        ]
        reference = first["per_finding"][name]
        lines.append(
            f"| {name} | {reference['boxes']} | " + " | ".join(cells) + f" | {_fmt(reference['centre_baseline'])} |"
        )
    return lines


def figure_lines(ranked: list[dict], paths: dict[str, dict[str, Path]], report_dir: Path) -> list[str]:
    """One subsection per model with its five figures (also in the model's MLflow run, under figures/)."""
    lines = [
        "",
        "## Figures per model",
        "",
        "Drawn by `evaluate@<model>` (`metrics/figures/<model>/`) and `explain@<model>` "
        "(`metrics/explain/<model>/`); each is also an artifact of the model's MLflow run (`figures/`).",
    ]
    for record in ranked:
        name = record["model"]
        lines += ["", f"### `{name}`", ""]
        for file_name, (caption, _) in MODEL_FIGURES.items():
            lines += [
                f"{caption[0].upper()}{caption[1:]}:",
                "",
                _image(paths[name][file_name], report_dir, f"{name}: {caption}"),
                "",
            ]
    return lines


# Cited only when the report shows CheXNet's numbers (NIH data).
CHEXNET_REFERENCE = (
    "Rajpurkar P. et al. CheXNet: radiologist-level pneumonia detection on chest X-rays with deep "
    "learning. arXiv:1711.05225, 2017 (the per-class AUROC reference)."
)


def reference_lines(chexnet: bool = False) -> list[str]:
    references = REFERENCES + ([CHEXNET_REFERENCE] if chexnet else [])
    return ["", "## References", ""] + [f"{number}. {text}" for number, text in enumerate(references, 1)]
