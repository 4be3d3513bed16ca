"""Model cards: one Markdown page per trained model, `metrics/cards/<model>.md`.

    inputs = load_card_inputs("resnet18", Path("metrics"), model_dir=Path("models/resnet18"))
    write_card(Path("metrics/cards/resnet18.md"), model_card("resnet18", **inputs))

A card answers, for one model, what someone about to use it should know first, after the
sections Mitchell et al. proposed ("Model Cards for Model Reporting", FAT* 2019): what the
model is; what it is for and what it must not be used for; the data it learnt from and was
tested on; its test results with their uncertainty; the thresholds that turn its scores into
calls and what they achieve; for which patient groups it does worse; what it costs to run; and
its limitations. Every number is read from the pipeline's records: `metrics/<model>.json`
(headline), `metrics/details/<model>.json` (evaluate@), `metrics/split.json`,
`metrics/subgroups/<model>.json`, `metrics/efficiency/<model>.json` (profile@),
`metrics/expert_labels.json` and the training's resolved `config.json`; nothing is recomputed.
An optional input that is absent makes its section say "not available" instead of failing.

The card imports no torch: `architecture` (a description, mean/std, input channels) is passed
in by a caller that has the model registry at hand; without it the card says where they live.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from cxr14.errors import Cxr14Error
from cxr14.io import atomic_write_text
from cxr14.labels import LABELS, NIH_COMPONENTS
from cxr14.model_names import REGISTERED_MODELS
from cxr14.reporting.files import ReportError
from cxr14.reporting.review import DIMENSION_NAMES, MIRRORED_GROUPS, fmt

# Said on every card of a model trained or tested on the phantom, and on no other card.
PHANTOM_CAVEAT = (
    "These numbers come from the phantom, a synthetic data set drawn by this project: they say "
    "nothing about how the model would do on real chest X-rays."
)
NOT_A_DEVICE = (
    "This model is not a medical device: it has not been validated for, and must not be used in, "
    "diagnosis, triage, screening or any other decision about a patient."
)
NOT_AVAILABLE = "not available"
SPLIT_METHODS = {
    "official": "NIH's official test list (its patients form the test split); validation carved by patient, "
    "seeded and stratified, from the remaining images",
    "patient": "a seeded, stratified split by patient of all images",
}
REFERENCES = {
    "mitchell": "Mitchell M. et al. Model cards for model reporting. FAT* 2019.",
    "wang": "Wang X. et al. ChestX-ray8: hospital-scale chest X-ray database and benchmarks on weakly-supervised "
    "classification and localization of common thorax diseases. CVPR 2017.",
    "oakden": "Oakden-Rayner L. Exploring large-scale public medical image datasets. Academic Radiology 2020 "
    "(preprint 2019).",
    "majkowska": "Majkowska A. et al. Chest radiograph interpretation with deep learning models: assessment with "
    "radiologist-adjudicated reference standards and population-adjusted evaluation. Radiology 2020.",
    "seyyed": "Seyyed-Kalantari L. et al. Underdiagnosis bias of artificial intelligence algorithms applied to "
    "chest radiographs in under-served patient populations. Nature Medicine 2021.",
    "guo": "Guo C. et al. On calibration of modern neural networks. ICML 2017.",
}


class CardError(Cxr14Error, ValueError):
    """The inputs of a model card do not belong together (another model's file, other thresholds)."""


def interval(bounds: Sequence[float | None] | None, digits: int = 3, sign: bool = False) -> str:
    """ "[low, high]", or "" when there is no interval."""
    if not bounds or bounds[0] is None or bounds[1] is None:
        return ""
    form = f"+.{digits}f" if sign else f".{digits}f"
    return f"[{bounds[0]:{form}}, {bounds[1]:{form}}]"


def _count(value: int | None) -> str:
    """ "1,502", or "?" when not recorded."""
    return "?" if value is None else f"{value:,}"


def _with_interval(value: float | None, bounds: Sequence[float | None] | None, digits: int = 3) -> str:
    """ "0.676 [0.617, 0.718]", "0.676" without an interval, "–" when undefined."""
    text = fmt(value, digits)
    return text if text == "–" or not interval(bounds) else f"{text} {interval(bounds, digits)}"


def thresholds_from_details(details: dict) -> dict | None:
    """The validation-chosen thresholds of an evaluate@ record as {"max_f1": {finding: t},
    "sensitivity": {"target": 0.9, "thresholds": {finding: t}}}; None when it has none."""
    metrics = details.get("metrics") or {}
    if not metrics.get("thresholds"):
        return None
    sensitivity = metrics.get("sensitivity_thresholds")
    return {
        "max_f1": dict(metrics["thresholds"]),
        "sensitivity": None
        if not sensitivity
        else {"target": metrics.get("sensitivity_target"), "thresholds": dict(sensitivity)},
    }


def _normalised_thresholds(model: str, thresholds: dict) -> dict:
    """`thresholds` in the card's form; also accepts the details file's own keys
    (`thresholds`, `sensitivity_thresholds`, `sensitivity_target`)."""
    if "max_f1" not in thresholds and "thresholds" in thresholds:
        thresholds = thresholds_from_details({"metrics": thresholds}) or {}
    chosen = [thresholds.get("max_f1")] + [(thresholds.get("sensitivity") or {}).get("thresholds")]
    for table in filter(None, chosen):
        missing = [name for name in LABELS if name not in table]
        if missing:
            raise CardError(
                f"model card of {model}: the thresholds lack {', '.join(missing)}; pass one threshold per "
                "finding (as evaluate@ writes them in metrics/details/<model>.json)"
            )
    if not thresholds.get("max_f1"):
        raise CardError(f"model card of {model}: thresholds have no 'max_f1' table; pass {{'max_f1': {{...}}}}")
    return thresholds


def _resolve_thresholds(model: str, thresholds: dict | None, details: dict) -> dict | None:
    """The thresholds to print: given ones must be those the test metrics in `details` were measured at."""
    recorded = thresholds_from_details(details)
    if thresholds is None:
        return recorded
    given = _normalised_thresholds(model, thresholds)
    if recorded is not None:
        pairs = [(given["max_f1"], recorded["max_f1"], "max-F1")]
        if given.get("sensitivity") and recorded.get("sensitivity"):
            pairs.append((given["sensitivity"]["thresholds"], recorded["sensitivity"]["thresholds"], "sensitivity"))
        for mine, theirs, what in pairs:
            differ = [name for name in LABELS if not math.isclose(mine[name], theirs[name], rel_tol=1e-9)]
            if differ:
                raise CardError(
                    f"model card of {model}: the {what} thresholds given differ from those in "
                    f"metrics/details/{model}.json ({', '.join(differ)}), so the test sensitivity and "
                    "specificity printed beside them would belong to other thresholds; pass the thresholds "
                    "of the same evaluate@ run"
                )
    return given


def _data_source(model: str, data_source: str | None, config: dict | None) -> str:
    recorded = ((config or {}).get("data") or {}).get("source")
    if data_source and recorded and data_source != recorded:
        raise CardError(
            f"model card of {model}: data_source {data_source!r} but the training config says "
            f"data.source {recorded!r}; pass the config of this model's training"
        )
    source = data_source or recorded
    if not source:
        raise CardError(
            f"model card of {model}: the data source is unknown; pass data_source ('phantom' or 'nih') or the "
            "training config (models/<model>/seed-<seed>/config.json)"
        )
    return str(source)


def _check_model(model: str, details: dict, headline: dict, subgroups: dict | None, efficiency: dict | None) -> None:
    """Every per-model record given must be this model's."""
    named = {"details": details.get("model"), "subgroups": (subgroups or {}).get("model")}
    named["efficiency"] = (efficiency or {}).get("model")
    wrong = {what: name for what, name in named.items() if name is not None and name != model}
    if wrong:
        what, name = next(iter(wrong.items()))
        raise CardError(
            f"model card of {model}: the {what} record is model {name!r}'s; pass metrics/{what}/{model}.json"
        )
    if "macro_auroc" not in headline:
        raise CardError(f"model card of {model}: the headline record has no macro_auroc; pass metrics/{model}.json")


def model_card(
    model: str,
    *,
    headline: dict,
    details: dict,
    split: dict,
    config: dict | None = None,
    thresholds: dict | None = None,
    subgroups: dict | None = None,
    efficiency: dict | None = None,
    expert_summary: dict | None = None,
    data_source: str | None = None,
    architecture: dict | None = None,
    report_link: str = "../report.md",
) -> str:
    """The Markdown model card of `model`.

    Args:
        model: the model's name (`models:` in params.yaml).
        headline: metrics/<model>.json (mean over training seeds, its interval and spread).
        details: metrics/details/<model>.json (per-finding metrics, thresholds, calibration,
            radiologist comparison, seeds, training summary; the detail tables are the first seed's).
        split: metrics/split.json (images, patients and positives per split, split method).
        config: the resolved training config, models/<model>/seed-<s>/config.json; None: the
            training settings section says so.
        thresholds: {"max_f1": {finding: t}, "sensitivity": {"target": 0.9, "thresholds": {...}}}
            (or the details file's keys); None: those in `details`. Given ones must equal those.
        subgroups, efficiency, expert_summary: metrics/subgroups/<model>.json,
            metrics/efficiency/<model>.json, metrics/expert_labels.json; None: "not available".
        data_source: "phantom" or "nih" (params.yaml data.source); None: the config's.
        architecture: optional {"description": str, "mean": [...], "std": [...], "in_chans": int}
            from the model registry (cxr14.models), which this module does not import.
        report_link: the comparison report, relative to the card's folder.

    Raises:
        CardError: a record of another model, thresholds other than those measured, no data source.
    """
    _check_model(model, details, headline, subgroups, efficiency)
    source = _data_source(model, data_source, config)
    chosen = _resolve_thresholds(model, thresholds, details)
    lines = [f"# Model card: `{model}`", "", _preamble(source), ""]
    lines += details_section(model, details, config, efficiency, architecture)
    lines += use_section(config)
    lines += data_section(split, config, source, expert_summary)
    lines += training_section(config, details, headline)
    lines += metrics_section(model, headline, details, split, source, report_link)
    lines += threshold_section(model, chosen, details)
    lines += subgroup_section(model, subgroups, report_link)
    lines += efficiency_section(model, efficiency)
    lines += limitations_section(model, source, details, subgroups)
    lines += _reference_lines(source, details, subgroups)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_card(path: Path, text: str) -> None:
    """Write a card atomically (a temporary sibling renamed into place), creating its folder."""
    atomic_write_text(Path(path), text)


def _preamble(source: str) -> str:
    synthetic = f" {PHANTOM_CAVEAT}" if source == "phantom" else ""
    return (
        "Research model of the cxr14 pipeline, which trains and compares architectures for multi-label "
        f"classification of chest radiographs. **{NOT_A_DEVICE}**{synthetic} Every number below is read from the "
        "pipeline's outputs under `metrics/` (written by the stages named in each section)."
    )


def _read_json(path: Path, stage: str, required: bool) -> dict | None:
    if not path.is_file():
        if required:
            raise ReportError(f"{path}: missing; run `dvc repro {stage}` to write it")
        return None
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def load_card_inputs(model: str, metrics_dir: Path = Path("metrics"), model_dir: Path | None = None) -> dict:
    """The keyword arguments of :func:`model_card` from the pipeline's files.

    metrics/<model>.json, metrics/details/<model>.json and metrics/split.json are required
    (ReportError naming the stage that writes a missing one); subgroups, efficiency, the expert
    label summary and, with `model_dir` (models/<model>), the first seed's config.json are read
    when present. `data_source` is left to the config; pass it to model_card when there is none.
    """
    metrics_dir = Path(metrics_dir)
    details = _read_json(metrics_dir / "details" / f"{model}.json", f"evaluate@{model}", True) or {}
    inputs = {
        "headline": _read_json(metrics_dir / f"{model}.json", f"evaluate@{model}", True),
        "details": details,
        "split": _read_json(metrics_dir / "split.json", "split", True),
        "subgroups": _read_json(metrics_dir / "subgroups" / f"{model}.json", f"evaluate@{model}", False),
        "efficiency": _read_json(metrics_dir / "efficiency" / f"{model}.json", f"profile@{model}", False),
        "expert_summary": _read_json(metrics_dir / "expert_labels.json", "expert_labels", False),
        "config": None,
    }
    if model_dir is not None and details.get("seed") is not None:
        config_path = Path(model_dir) / f"seed-{details['seed']}" / "config.json"
        inputs["config"] = _read_json(config_path, f"train@{model}-{details['seed']}", False)
    return inputs


# ----------------------------------------------------------------------------- 1. model details


def _description(model: str, architecture: dict | None) -> str:
    if architecture and architecture.get("description"):
        return str(architecture["description"])
    if model in REGISTERED_MODELS:
        return "a design registered in `cxr14.models` (`python pipeline/train.py --help` describes it)"
    return f"timm's `{model.removeprefix('timm:')}` architecture with a new 15-output classifier"


def _channels(efficiency: dict | None, architecture: dict | None) -> str:
    """Input channels from the profiled input size ("3x128x128") or the registry; else unknown."""
    if architecture and architecture.get("in_chans"):
        return str(architecture["in_chans"])
    size = str((efficiency or {}).get("input_size") or "")
    return size.split("x")[0] if size.count("x") == 2 else ""


def _normalisation(architecture: dict | None) -> str:
    if architecture and architecture.get("mean") is not None and architecture.get("std") is not None:
        mean = ", ".join(f"{value:.3f}" for value in architecture["mean"])
        std = ", ".join(f"{value:.3f}" for value in architecture["std"])
        return f"pixels scaled to [0, 1], then normalised per channel with mean ({mean}) and std ({std})"
    return (
        "pixels scaled to [0, 1], then normalised per channel with the mean and std the model's build declares "
        "(for timm architectures, timm's pretrained config; never a fixed constant)"
    )


def _weights(details: dict, config: dict | None) -> str:
    origin = (details.get("training") or {}).get("weights")
    train = (config or {}).get("train") or {}
    text = "random initialisation: trained from scratch on this data" if origin is None else f"started from `{origin}`"
    if origin is not None and train.get("freeze_backbone"):
        text += "; the backbone was frozen and only the classifier head trained"
    return text


def details_section(
    model: str, details: dict, config: dict | None, efficiency: dict | None, architecture: dict | None
) -> list[str]:
    """Architecture, size, input, output, weights, seeds and what identifies this build."""
    training = details.get("training") or {}
    profile = efficiency or {}
    params = profile.get("params_total", training.get("params_total"))
    trainable = profile.get("params_trainable", training.get("params_trainable"))
    size = training.get("image_size") or ((config or {}).get("train") or {}).get("image_size")
    channels = _channels(efficiency, architecture)
    flops = profile.get("flops_per_image")
    seeds = (details.get("seeds") or {}).get("seeds") or [details.get("seed")]
    lines = [
        "## Model details",
        "",
        f"- **Architecture:** `{model}`, {_description(model, architecture)}.",
        "- **Parameters:** "
        + (
            NOT_AVAILABLE if params is None else f"{params:,} ({trainable:,} trainable)" if trainable else f"{params:,}"
        ),
        "- **FLOPs per image:** "
        + (NOT_AVAILABLE if flops is None else f"{flops / 1e9:.3f} GFLOPs at {profile.get('input_size', '?')}"),
        f"- **Input:** one frontal chest radiograph, 8-bit grayscale, resized to {size} × {size} pixels, "
        + (
            ""
            if channels == "1"
            else f"repeated into {channels} identical channels; "
            if channels
            else "repeated into as many identical channels as the model takes; "
        )
        + f"{_normalisation(architecture)}. `cxr14 predict` applies the same preprocessing.",
        "- **Output:** 15 independent scores in [0, 1], one per target (multi-label: they do not sum to 1; "
        "section *Thresholds* turns them into calls).",
        f"- **Weights:** {_weights(details, config)}.",
        f"- **Training seeds:** {', '.join(str(seed) for seed in seeds)} (one trained model per seed; the "
        f"per-finding tables below are seed {details.get('seed', seeds[0])}'s).",
        f"- **Model selection:** {training.get('selection', NOT_AVAILABLE)}, on the validation split.",
        "- **Version:** no release number or date is assigned; this build is identified by "
        + (f"its MLflow run `{training['run_id']}` and " if training.get("run_id") else "")
        + "the `dvc.lock` of the commit that holds this card.",
        "",
    ]
    return lines


# ----------------------------------------------------------------------------- 2. intended use


def use_section(config: dict | None) -> list[str]:
    """Intended and out-of-scope use, and the 15 targets."""
    views = ((config or {}).get("split") or {}).get("views")
    view_text = f" (views kept for training: {', '.join(views)})" if views else ""
    return [
        "## Intended use",
        "",
        "- **Intended:** research. Comparing deep-learning architectures on chest radiographs under one "
        "reproducible pipeline, and studying their label-noise sensitivity, calibration and subgroup behaviour.",
        "- **Users:** machine-learning researchers and engineers.",
        f"- **Inputs:** frontal chest radiographs, posteroanterior (PA) or anteroposterior (AP), the only views "
        f"it was trained on{view_text}.",
        f"- **Targets:** {', '.join(LABELS)}.",
        "",
        "**Out of scope:**",
        "",
        f"- {NOT_A_DEVICE}",
        "- Lateral views, other body parts, photographs or screenshots of radiographs.",
        "- Images from other hospitals, scanners or populations without first testing the model there "
        "(it was tested on one data source only).",
        "- Reading a score as the probability that a patient has the finding: scores reflect the prevalence "
        "and label noise of the training data.",
        "",
    ]


# ----------------------------------------------------------------------------- 3. data


def _source_lines(source: str, split: dict) -> list[str]:
    images = sum((split.get(name) or {}).get("images", 0) for name in ("train", "val", "test"))
    patients = sum((split.get(name) or {}).get("patients", 0) for name in ("train", "val", "test"))
    if source == "phantom":
        text = (
            "**Source: synthetic data (the project's embedded phantom).** A deterministic stand-in for ChestX-ray14 "
            "in NIH's file layout, whose drawn images carry simple, location-plausible signs of each finding "
            f"({images:,} images of {patients:,} simulated patients here). {PHANTOM_CAVEAT}"
        )
    elif source == "nih":
        text = (
            "**Source: NIH ChestX-ray14** (Wang et al., CVPR 2017): frontal chest radiographs taken at one "
            "hospital, the NIH Clinical Center; the full data set holds 112,120 images of 30,805 patients, this "
            f"model's splits hold {images:,} images of {patients:,} patients."
        )
    else:
        text = f"**Source:** data source `{source}` ({images:,} images of {patients:,} patients); no description of it."
    return [text, ""]


def _split_lines(split: dict) -> list[str]:
    method = split.get("method")
    described = SPLIT_METHODS.get(str(method), f"split method `{method}`")
    notes = [
        f"{split[key]:,} {what}"
        for key, what in (
            ("excluded_images", "images excluded by the view / one-per-patient filters or the train fraction"),
            ("dropped_missing_images", "metadata rows dropped for a missing image"),
        )
        if split.get(key)
    ]
    if split.get("train_fraction") not in (None, 1, 1.0):
        notes.append(f"training on a {split['train_fraction']:g} subsample of the training patients")
    lines = [
        f"**Split:** {described}. By patient: no patient has images in two splits, so follow-up images of a "
        "test patient were never seen in training. Source: `metrics/split.json`"
        + (f" ({'; '.join(notes)})." if notes else "."),
        "",
        "| split | images | patients |",
        "|---|---:|---:|",
    ]
    for name in ("train", "val", "test"):
        block = split.get(name) or {}
        lines.append(f"| {name} | {block.get('images', 0):,} | {block.get('patients', 0):,} |")
    return lines + [""]


def _noise_text(config: dict | None) -> str:
    noise = (((config or {}).get("data") or {}).get("phantom") or {}).get("label_noise")
    if not noise:
        return (
            "The phantom's metadata labels may carry simulated report-style noise (`data.phantom.label_noise`); its "
            f"rates are {NOT_AVAILABLE} here (no training config given)."
        )
    missed, spurious = noise.get("missed", 0), noise.get("spurious", 0)
    if not missed and not spurious:
        return "The phantom's labels are noiseless for this model (`data.phantom.label_noise` is 0 / 0)."
    return (
        "The phantom's images show the truth; its metadata labels carry simulated report-style noise "
        f"(`data.phantom.label_noise`): each true finding of an image is left out with probability {missed:g} and "
        f"each absent finding added with probability {spurious:g}. The model was trained, and is scored below, on "
        "these noisy labels."
    )


def _label_lines(source: str, config: dict | None, expert_summary: dict | None) -> list[str]:
    if source == "phantom":
        labels = _noise_text(config)
    else:
        labels = (
            "NIH's labels were text-mined from the radiology reports, not read from the images (Wang et al. 2017). "
            "A radiologist's visual review of a sample of the images (Oakden-Rayner, Academic Radiology 2020) found "
            "that for many findings they match what the images show much less often than the data set's "
            "documentation suggests, and described hidden stratification: clinically different cases gathered "
            "under one label. The model was trained, and is scored below, on these labels: its test numbers "
            "measure agreement with the text-mined labels, not with the truth."
        )
    summary = expert_summary or {}
    if not summary.get("available"):
        reference = f"**Reference labels:** {NOT_AVAILABLE} (no radiologist-adjudicated labels were configured)."
    elif source == "phantom":
        reference = (
            f"**Reference labels:** the phantom's noiseless labels stand in for radiologists on "
            f"{summary.get('in_test_split', 0):,} test images (`metrics/expert_labels.json`)."
        )
    else:
        reference = (
            "**Reference labels:** radiologist-adjudicated labels (Majkowska et al., Radiology 2020) of "
            f"{summary.get('in_test_split', 0):,} test images of {summary.get('test_patients', 0):,} patients, four "
            "findings (`metrics/expert_labels.json`)."
        )
    return [f"**Labels:** {labels}", "", reference, ""]


def data_section(split: dict, config: dict | None, source: str, expert_summary: dict | None) -> list[str]:
    """Where the images come from, how they were split, and how trustworthy their labels are."""
    return (
        ["## Data and split", ""]
        + _source_lines(source, split)
        + _split_lines(split)
        + _label_lines(source, config, expert_summary)
    )


# ----------------------------------------------------------------------------- 4. training


def _augment_text(augment: dict | None) -> str:
    if not augment:
        return NOT_AVAILABLE
    parts = ["horizontal flip"] if augment.get("hflip") else []
    if augment.get("rotation_deg"):
        parts.append(f"rotation ±{augment['rotation_deg']:g}°")
    if augment.get("shift_x") or augment.get("shift_y"):
        parts.append(f"shift ±{augment.get('shift_x', 0):.0%} × ±{augment.get('shift_y', 0):.0%} of the image")
    if augment.get("zoom"):
        parts.append(f"zoom ±{augment['zoom']:.0%}")
    if augment.get("shear_deg"):
        parts.append(f"shear ±{augment['shear_deg']:g}°")
    return ", ".join(parts) or "none"


def _loss_text(train: dict) -> str:
    loss = str(train.get("loss", "bce"))
    text = {"bce": "binary cross-entropy", "weighted_bce": "binary cross-entropy, pos_weight = negatives/positives"}
    described = text.get(loss, loss)
    if loss == "focal":
        described = f"focal (alpha {train.get('focal_alpha')}, gamma {train.get('focal_gamma')})"
    if train.get("label_smoothing"):
        described += f", label smoothing {train['label_smoothing']:g}"
    return described


def _early_stopping(train: dict) -> str:
    text = f"after {train.get('patience')} epochs without a better validation macro AUROC"
    return text + (f", not before epoch {train['min_epochs']}" if train.get("min_epochs") else "")


def _settings_rows(train: dict, world_size: int) -> list[tuple[str, str]]:
    optimizer = str(train.get("optimizer", "?"))
    if optimizer == "sgd":
        optimizer += f" (momentum {train.get('momentum', 0):g})"
    batch = f"{train.get('batch_size')}" + (f" per process × {world_size} processes" if world_size > 1 else "")
    schedule = str(train.get("scheduler", "?"))
    if train.get("warmup_epochs"):
        schedule += f", {train['warmup_epochs']:g} warm-up epochs"
    pretrained = train.get("pretrained_path") or train.get("pretrained")
    return [
        ("epochs (at most)", str(train.get("epochs"))),
        ("early stopping", _early_stopping(train)),
        (
            "batch size",
            batch
            + (f", {train['grad_accum_steps']} accumulation steps" if train.get("grad_accum_steps", 1) > 1 else ""),
        ),
        ("optimizer", optimizer),
        ("learning rate", f"{train.get('lr', 0):g} (weight decay {train.get('weight_decay', 0):g})"),
        ("schedule", schedule),
        ("loss", _loss_text(train)),
        ("batch sampling", str(train.get("sampling", "uniform"))),
        ("image size", f"{train.get('image_size')} px"),
        ("augmentation", _augment_text(train.get("augment"))),
        ("pretrained setting", f"`{pretrained}`" + (", backbone frozen" if train.get("freeze_backbone") else "")),
    ]


def training_section(config: dict | None, details: dict, headline: dict) -> list[str]:
    """The settings of the resolved config and what the training recorded (epochs, best epoch, time)."""
    training = details.get("training") or {}
    lines = ["## Training", ""]
    train = (config or {}).get("train")
    if train:
        lines += ["Settings from the resolved training config (`config.json`, overrides applied):", ""]
        lines += ["| setting | value |", "|---|---|"]
        lines += [
            f"| {name} | {value} |" for name, value in _settings_rows(train, int((config or {}).get("world_size") or 1))
        ]
    else:
        lines.append(f"Training settings: {NOT_AVAILABLE} (the training's `config.json` was not given).")
    seconds = headline.get("train_seconds", training.get("train_seconds"))
    best = training.get("best_val_macro_auroc")
    lines += [
        "",
        f"Recorded by training (seed {details.get('seed', '?')}): {training.get('epochs_run', '?')} epochs run, best "
        f"epoch {training.get('best_epoch', headline.get('best_epoch', '?'))}"
        + (f" (validation macro AUROC {fmt(best)})" if best is not None else "")
        + (f"; training time {seconds:,.0f} s" if seconds is not None else "")
        + (" (all seeds together)" if (headline.get("seeds") or 1) > 1 else "")
        + ". Times depend on the machine and its load.",
        "",
    ]
    return lines


# ----------------------------------------------------------------------------- 5. test results


def _seed_value(mean: float | None, key: str, details: dict, seeds: int) -> str:
    """The headline value with the first seed's interval: "0.854 [0.829, 0.877]" for one seed,
    "0.850 (mean over 3 seeds; seed 42: 0.848 [0.82, 0.87])" for several."""
    metrics = details.get("metrics") or {}
    bounds = (metrics.get("intervals") or {}).get(key)
    if seeds == 1:
        return _with_interval(mean if mean is not None else metrics.get(key), bounds)
    first = _with_interval(metrics.get(key), bounds)
    return f"{fmt(mean)} (mean over {seeds} seeds; seed {details.get('seed', '?')}: {first})"


def _headline_lines(headline: dict, details: dict) -> list[str]:
    """Macro AUROC (mean over seeds, interval, spread), micro AUROC and macro AP."""
    metrics = details.get("metrics") or {}
    bounds = metrics.get("intervals") or {}
    resamples = bounds.get("resamples") or (details.get("seeds") or {}).get("resamples")
    seeds = int(headline.get("seeds") or 1)
    ci = [headline.get("macro_auroc_ci_low"), headline.get("macro_auroc_ci_high")]
    spread = (
        f"mean over {seeds} training seeds, SD across seeds {fmt(headline.get('macro_auroc_seed_sd'))}"
        if seeds > 1
        else "one training seed: the spread across seeds is not measured"
    )
    lines = [
        f"- **Macro AUROC:** {_with_interval(headline['macro_auroc'], ci)} ({spread}; 95 % interval from "
        f"{resamples or 'a'} bootstrap resamples of test patients), over {metrics.get('classes_in_macro_auroc', '?')} "
        "of the 15 targets (a target without a positive test image has no AUROC).",
        f"- **Micro AUROC:** {_seed_value(headline.get('micro_auroc'), 'micro_auroc', details, seeds)}",
        f"- **Macro average precision:** {_seed_value(headline.get('macro_ap'), 'macro_ap', details, seeds)}",
    ]
    per_seed = details.get("seeds") or {}
    if seeds > 1 and per_seed.get("seeds"):
        values = ", ".join(f"{seed}: {fmt(value)}" for seed, value in zip(per_seed["seeds"], per_seed["macro_auroc"]))
        lines.append(f"- **Macro AUROC per training seed:** {values}.")
    return lines


def _per_finding_lines(details: dict, split: dict) -> list[str]:
    metrics = details.get("metrics") or {}
    if not metrics.get("auroc"):
        return [f"Per-finding results: {NOT_AVAILABLE}.", ""]
    bounds = metrics.get("intervals") or {}
    positives = (split.get("test") or {}).get("positives") or {}
    lines = [
        f"Per finding (seed {details.get('seed', '?')}; 95 % patient-bootstrap intervals):",
        "",
        "| finding | test positives | AUROC [95 % CI] | AP [95 % CI] |",
        "|---|---:|---:|---:|",
    ]
    for name in LABELS:
        auroc = _with_interval(metrics["auroc"].get(name), (bounds.get("auroc") or {}).get(name))
        ap = _with_interval((metrics.get("ap") or {}).get(name), (bounds.get("ap") or {}).get(name))
        lines.append(f"| {name} | {positives.get(name, '–')} | {auroc} | {ap} |")
    return lines + [""]


def _calibration_lines(details: dict) -> list[str]:
    metrics = details.get("metrics") or {}
    scaling = metrics.get("temperature_scaling")
    lines = ["### Calibration", ""]
    if not scaling:
        ece = (metrics.get("calibration") or {}).get("ece")
        return lines + [f"Expected calibration error {fmt(ece, 4)}; temperature scaling: {NOT_AVAILABLE}.", ""]
    before, after = scaling["before"], scaling["after"]
    temperatures = list((scaling.get("temperatures") or {}).values())
    lines += [
        "One temperature per finding, fitted on the validation split and applied to the test scores (Guo et al. "
        "2017); it changes no ranking, so AUROC stays the same. ECE: expected calibration error with "
        f"{scaling.get('bins', '?')} equal-width bins. Test split, seed {details.get('seed', '?')}:",
        "",
        "| | before scaling | after scaling |",
        "|---|---:|---:|",
        f"| Brier score (macro) | {fmt(before.get('macro_brier'), 4)} | {fmt(after.get('macro_brier'), 4)} |",
        f"| ECE (macro over findings) | {fmt(before.get('macro_ece'), 4)} | {fmt(after.get('macro_ece'), 4)} |",
        f"| ECE (all scores pooled) | {fmt(before.get('pooled_ece'), 4)} | {fmt(after.get('pooled_ece'), 4)} |",
        f"| log loss (macro) | {fmt(before.get('macro_test_nll'), 4)} | {fmt(after.get('macro_test_nll'), 4)} |",
        "",
    ]
    if temperatures:
        lines += [f"Temperatures range from {min(temperatures):.2f} to {max(temperatures):.2f}.", ""]
    return lines


def _expert_lines(details: dict, source: str) -> list[str]:
    expert = (details.get("metrics") or {}).get("expert")
    lines = ["### Against reference labels", ""]
    if not expert or not expert.get("findings"):
        return lines + [f"Comparison with radiologist labels: {NOT_AVAILABLE}.", ""]
    who = (
        "the phantom's noiseless labels (standing in for radiologists)"
        if source == "phantom"
        else ("radiologist-adjudicated labels (Majkowska et al. 2020)")
    )
    lines += [
        f"The same {expert.get('images', '?')} test images ({expert.get('patients', '?')} patients) scored against "
        f"{who} and against the labels the model was trained on; an expert finding gathers NIH classes (max over "
        "them). Seed " + f"{details.get('seed', '?')}, 95 % patient-bootstrap intervals.",
        "",
        "| finding | NIH classes | reference positives | AUROC vs reference | AUROC vs training labels |",
        "|---|---|---:|---:|---:|",
    ]
    for finding, row in expert["findings"].items():
        components = " / ".join(NIH_COMPONENTS.get(finding, ())) or "none (no model output)"
        lines.append(
            f"| {finding} | {components} | {row.get('expert_positives', '–')} | "
            f"{_with_interval(row.get('auroc_expert'), row.get('auroc_expert_ci'))} | "
            f"{_with_interval(row.get('auroc_nih'), row.get('auroc_nih_ci'))} |"
        )
    mean = expert.get("mean") or {}
    if mean.get("difference") is not None:
        lines += [
            "",
            f"Mean over {len(mean.get('findings') or [])} findings: {fmt(mean.get('auroc_expert'))} against the "
            f"reference, {fmt(mean.get('auroc_nih'))} against the training labels (difference "
            f"{mean['difference']:+.3f} {interval(mean.get('difference_ci'), sign=True)}).",
        ]
    return lines + [""]


def metrics_section(
    model: str, headline: dict, details: dict, split: dict, source: str, report_link: str = "../report.md"
) -> list[str]:
    """Headline with intervals and seed spread, per finding, calibration, reference labels."""
    test = split.get("test") or {}
    lines = [
        "## Test results",
        "",
        f"On the test split ({_count(test.get('images'))} images of {_count(test.get('patients'))} patients), touched "
        f"once after model selection on validation. Sources: `metrics/{model}.json`, "
        f"`metrics/details/{model}.json`.",
        "",
    ]
    if source == "phantom":
        lines += [f"*{PHANTOM_CAVEAT}*", ""]
    lines += _headline_lines(headline, details) + [""]
    if source == "nih":
        lines += [
            "Published results on ChestX-ray14 come from other splits, resolutions and training budgets: the "
            f"[comparison report]({report_link}) lists some as references (section Published references), none "
            "a like-for-like comparison.",
            "",
        ]
    lines += _per_finding_lines(details, split)
    lines += _calibration_lines(details)
    lines += _expert_lines(details, source)
    return lines


# ----------------------------------------------------------------------------- 6. thresholds


def threshold_section(model: str, thresholds: dict | None, details: dict) -> list[str]:
    """Both validation-chosen operating points per finding with the test sensitivity and specificity."""
    lines = ["## Thresholds", ""]
    if not thresholds:
        return lines + [f"Validation-chosen thresholds: {NOT_AVAILABLE}.", ""]
    metrics = details.get("metrics") or {}
    at_f1, at_target = metrics.get("at_max_f1") or {}, metrics.get("at_sensitivity") or {}
    sensitivity = thresholds.get("sensitivity") or {}
    target, by_target = sensitivity.get("target"), sensitivity.get("thresholds") or {}
    target_text = f"sensitivity ≥ {target:g}" if target is not None else "sensitivity target"
    lines += [
        '**What "positive" means:** the model calls a finding positive in an image when that finding\'s score is '
        "greater than or equal to the threshold in its row, and negative otherwise; 0.5 has no special meaning.",
        "",
        "Each finding has two operating points, both chosen on the validation split only: the threshold with the "
        f"highest F1, and the highest threshold that reached {target_text} on validation. They apply to the raw "
        "scores, before temperature scaling. Beside each, the test sensitivity and specificity it gave (seed "
        f"{details.get('seed', '?')}); a threshold that met the target on validation can miss it on test. "
        f"Rounded to 4 decimals; exact values in `metrics/details/{model}.json`.",
        "",
        f"| finding | max-F1 threshold | sensitivity | specificity | threshold for {target_text} | sensitivity | "
        "specificity |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in LABELS:
        f1_point, target_point = at_f1.get(name) or {}, at_target.get(name) or {}
        lines.append(
            f"| {name} | {fmt(thresholds['max_f1'].get(name), 4)} | {fmt(f1_point.get('sensitivity'))} | "
            f"{fmt(f1_point.get('specificity'))} | {fmt(by_target.get(name), 4)} | "
            f"{fmt(target_point.get('sensitivity'))} | {fmt(target_point.get('specificity'))} |"
        )
    return lines + [""]


# ----------------------------------------------------------------------------- 7. subgroups


def _group_cells(entry: dict) -> tuple[str, str]:
    """(macro AUROC, under-diagnosis rate), each with its interval, or "too small"."""
    if entry.get("too_small"):
        small = f"too small ({entry.get('patients', '?')} patients)"
        return small, small
    under = entry.get("underdiagnosis") or {}
    rate = (
        f"too small ({under.get('patients_with_finding', '?')} patients with a finding)"
        if under.get("too_small")
        else _with_interval(under.get("rate"), under.get("ci"))
    )
    return _with_interval(entry.get("macro_auroc"), entry.get("macro_auroc_ci")), rate


def _gaps(subgroups: dict) -> tuple[list[tuple[float, str]], dict[str, tuple[float, str, bool]]]:
    """(every gap whose interval excludes 0, as (|gap|, text)), and per dimension its largest TPR gap
    (|gap|, text, interval excludes 0); the mirrored second group of a two-group dimension is skipped."""
    found: list[tuple[float, str]] = []
    largest: dict[str, tuple[float, str, bool]] = {}
    for dimension, block in (subgroups.get("dimensions") or {}).items():
        reference = MIRRORED_GROUPS.get(dimension) or block.get("gap_reference") or "the other groups"
        for group, by_label in (block.get("gaps") or {}).items():
            if MIRRORED_GROUPS.get(dimension) == group:
                continue
            for label, rates in by_label.items():
                for rate, gap in rates.items():
                    if gap.get("gap") is None:
                        continue
                    text = (
                        f"{DIMENSION_NAMES.get(dimension, dimension)} {group} − {reference}, {label} {rate.upper()}: "
                        f"{gap['gap']:+.3f} {interval(gap.get('ci'), sign=True)}".rstrip()
                    )
                    size = abs(gap["gap"])
                    if gap.get("excludes_zero"):
                        found.append((size, text))
                    if rate == "tpr" and size > largest.get(dimension, (-1.0, "", False))[0]:
                        largest[dimension] = (size, text, bool(gap.get("excludes_zero")))
    return sorted(found, reverse=True), largest


def _gap_lines(subgroups: dict) -> list[str]:
    found, largest = _gaps(subgroups)
    lines = [
        f"Largest true-positive-rate gap per attribute, at the max-F1 thresholds (a rate counts only from "
        f"{subgroups.get('min_cases', '?')} positives of the finding in the group):",
        "",
    ]
    for dimension in subgroups.get("dimensions") or {}:
        if dimension in largest:
            _, text, real = largest[dimension]
            verdict = "interval excludes 0" if real else "interval includes 0: not established"
            lines.append(f"- {text} ({verdict})")
        else:
            lines.append(f"- {DIMENSION_NAMES.get(dimension, dimension)}: no group with enough positives to compare")
    lines += [
        "",
        f"TPR and FPR gaps whose 95 % interval excludes 0: {len(found)}" + ("; the largest:" if found else "."),
    ]
    if found:
        lines += [""] + [f"- {text}" for _, text in found[:5]]
        if len(found) > 5:
            lines.append(f"- … and {len(found) - 5} more (see the report)")
    return lines + [""]


def subgroup_section(model: str, subgroups: dict | None, report_link: str) -> list[str]:
    """Macro AUROC and under-diagnosis per group, the largest TPR gaps; the full tables are in the report."""
    lines = ["## Subgroups", ""]
    if not subgroups or not subgroups.get("dimensions"):
        return lines + [f"Subgroup analysis: {NOT_AVAILABLE} (no `metrics/subgroups/{model}.json`).", ""]
    lines += [
        f"Test split by sex, age, view and first image vs follow-up (`metrics/subgroups/{model}.json`, seed "
        f"{subgroups.get('seed', '?')}); groups under {subgroups.get('min_patients', '?')} patients are too small "
        "to score. Under-diagnosis: the share of images with at least one finding that the model calls "
        '"No Finding" (Seyyed-Kalantari et al. 2021). '
        f"Full tables, every gap and the sex × age cells: [the comparison report]({report_link}), section Subgroups.",
        "",
        "| attribute | group | images / patients | macro AUROC [95 % CI] | under-diagnosis [95 % CI] |",
        "|---|---|---:|---:|---:|",
    ]
    for dimension, block in subgroups["dimensions"].items():
        for group, entry in (block.get("groups") or {}).items():
            auroc, under = _group_cells(entry)
            lines.append(
                f"| {DIMENSION_NAMES.get(dimension, dimension)} | {group} | {entry.get('images', '?')} / "
                f"{entry.get('patients', '?')} | {auroc} | {under} |"
            )
    return lines + [""] + _gap_lines(subgroups)


# ----------------------------------------------------------------------------- 8. efficiency

# Optional descriptions of the measuring machine, shown when the profile records them.
HARDWARE_KEYS = ("device_name", "cpu", "cpu_model", "threads")


def efficiency_section(model: str, efficiency: dict | None) -> list[str]:
    """Parameters, FLOPs, size, latency and throughput as profile@ measured them, and where."""
    lines = ["## Efficiency", ""]
    if not efficiency:
        return lines + [f"Efficiency figures: {NOT_AVAILABLE} (no `metrics/efficiency/{model}.json`).", ""]
    flops, latency = efficiency.get("flops_per_image"), efficiency.get("latency_ms")
    throughput, size = efficiency.get("throughput_img_s"), efficiency.get("size_mb")
    hardware = [f"{key} {efficiency[key]}" for key in HARDWARE_KEYS if efficiency.get(key) not in (None, "")]
    params = efficiency.get("params_total")
    lines += [
        f"Measured by `profile@{model}` on device `{efficiency.get('device', '?')}`"
        + (f" ({', '.join(hardware)})" if hardware else "")
        + " at the training resolution (`metrics/efficiency/"
        f"{model}.json`). Latency and throughput depend on the machine and its load: compare them only within one "
        "run of the pipeline.",
        "",
        "| input | parameters | GFLOPs per image | size (MB) | latency, batch 1 (ms) | throughput (img/s) |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {efficiency.get('input_size', '?')} | {'–' if params is None else f'{params:,}'} | "
        f"{fmt(None if flops is None else flops / 1e9)} | {fmt(size, 1)} | {fmt(latency, 2)} | "
        f"{fmt(throughput, 0)}"
        + (f" at batch {efficiency['batch_size_throughput']}" if efficiency.get("batch_size_throughput") else "")
        + " |",
        "",
    ]
    return lines


# ----------------------------------------------------------------------------- 9. limitations


def _shift_text(source: str) -> str:
    if source == "phantom":
        return (
            "**Synthetic data.** The phantom exists to test the pipeline; none of its numbers transfer to real "
            "radiographs, on which a model must be trained and tested before anything is said about its accuracy."
        )
    if source == "nih":
        return (
            "**Dataset shift.** All images come from one hospital (the NIH Clinical Center), with its scanners, "
            "protocols and patient population; performance elsewhere is unknown and usually lower."
        )
    return f"**Dataset shift.** All images come from one data source (`{source}`); performance elsewhere is unknown."


def _subgroup_text(subgroups: dict | None) -> str:
    if not subgroups or not subgroups.get("dimensions"):
        return f"**Subgroups.** Performance per sex, age, view and follow-up: {NOT_AVAILABLE}; it may differ."
    found, _ = _gaps(subgroups)
    return (
        f"**Subgroups.** {len(found)} true- or false-positive-rate gap(s) between patient groups have intervals "
        "that exclude 0 (section Subgroups); small groups were not scored, and attributes the data do not record "
        "(race or insurance status, for example) could not be checked."
    )


def limitations_section(model: str, source: str, details: dict, subgroups: dict | None) -> list[str]:
    """What the numbers above do not show, and how to run the model."""
    noise = (
        "simulated report-style noise (section Data and split)"
        if source == "phantom"
        else "labels text-mined from reports, often wrong (section Data and split)"
    )
    size = (details.get("training") or {}).get("image_size")
    lines = [
        "## Limitations and ethical considerations",
        "",
        f"- **Label noise.** Trained and tested on {noise}: the test metrics measure agreement with those labels, "
        "and errors in them both cap and distort what the metrics can show.",
        f"- {_shift_text(source)}",
        "- **No external validation.** The model was never tested on data from another source.",
        f"- {_subgroup_text(subgroups)}",
        "- **Operating points.** The thresholds were chosen on a small validation split; sensitivity and "
        "specificity on new data will differ, and with another prevalence the predictive values change too.",
        "- **Resolution.** "
        + (f"The model sees {size} × {size} px images; " if size else "")
        + "small findings (nodules, a thin pneumothorax) may be invisible at low resolution.",
        "- **Not a diagnosis.** A score is a pattern match against noisy labels, not evidence of disease; "
        "a Grad-CAM map shows where the evidence raising a score lies, not why a finding is present, and is empty "
        "(the radiograph alone) when no location raises it, as for most calls of rare findings at their low "
        "thresholds (the report's localisation table counts the empty maps).",
        "",
        "### How to use it",
        "",
        "```bash",
        f"cxr14 predict --model models/{model} IMAGES --out predictions.csv",
        "```",
        "",
        "Per image it writes the 15 scores and a positive/negative call per finding at the max-F1 thresholds of "
        "section Thresholds (`--operating-point sensitivity` uses the other column), with the thresholds it "
        "used. Frontal radiographs only; for research, never for patient care.",
        "",
    ]
    return lines


def _reference_lines(source: str, details: dict, subgroups: dict | None) -> list[str]:
    keys = ["mitchell"]
    if source == "nih":
        keys += ["wang", "oakden"]
    if source == "nih" and (details.get("metrics") or {}).get("expert"):
        keys.append("majkowska")
    if subgroups:
        keys.append("seyyed")
    if (details.get("metrics") or {}).get("temperature_scaling"):
        keys.append("guo")
    return ["## References", ""] + [f"- {REFERENCES[key]}" for key in keys]
