"""params.yaml -> one typed, validated config object.

Every stage reads its settings through :func:`load_config`, so a typo such as
``train.lr_rate`` fails loudly instead of silently using a default:

    cfg = load_config("params.yaml")
    cfg.train.lr            # 0.0001

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the
key (with a "did you mean" hint) and the file.

Missing keys: a *partial* params file is completed with the dataclass defaults below, which
equal the committed params.yaml (tests/test_config.py keeps the two from drifting apart), so
leaving a key out means "the committed value", never a second, hidden set of defaults. An
*empty* file (nothing but comments, or not a mapping) is refused: it is far more likely a
truncated or clobbered params.yaml than a request for defaults.

Checks that need more than the file live with what they check and run at the start of the
stages concerned: model names in ``models`` and ``train.overrides`` against the registry and
timm (:func:`cxr14.models.registry.check_model_names`, kept out of here so that stages without
torch do not import the model zoo), and ``preprocess.size`` / ``train.image_size`` against the
cache actually on disk (:func:`cxr14.data.cache.check_cache_size`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from cxr14.errors import Cxr14Error


class ConfigError(Cxr14Error, ValueError):
    """params.yaml holds an unknown key, a wrong type or a bad value."""


def bounded(default: Any, low: float | None, high: float | None, brackets: str) -> Any:
    """A field whose allowed range sits next to it; :func:`load_config` checks it.

    ``low`` / ``high``: None = unbounded; ``brackets``: "[" / "]" include the bound, "(" / ")"
    exclude it, e.g. ``bounded(1e-4, 0, None, "()")`` for a value that must be > 0.
    """
    return field(default=default, metadata={"range": (low, high, brackets)})


@dataclass(frozen=True)
class LabelNoiseConfig:
    """Report-style label noise in the phantom's Data_Entry_2017.csv (the images and the expert
    file keep the truth). NIH's labels were mined from reports, roughly 90 % right (Wang et al.);
    radiologists re-reading samples found some classes well below that (Oakden-Rayner 2020).

    0.15 / 0.01 is a little harsher than 90 %: recall 0.85 for every finding, precision from 0.81
    (Pneumothorax) to 0.95 (Infiltration). Chosen so that the noise shows on the phantom's ~430
    test images: simulated on 200 test sets, a model at AUROC ~0.8 against the truth scores
    ~0.05 lower against the noisy labels (Pneumothorax, Nodule or mass, Airspace opacity), in
    every draw; at 0.1 / 0.005 the gap was ~0.02 and went the other way in 3 % of draws.
    """

    # Each true finding of an image is left out of its labels with this probability.
    missed: float = bounded(0.15, 0, 1, "[)")
    # Each absent finding of an image is added to its labels with this probability.
    spurious: float = bounded(0.01, 0, 1, "[)")


@dataclass(frozen=True)
class PhantomConfig:
    # ~600 patients x 3.6 follow-ups ~= 2,150 images, small enough to generate in about a
    # minute on 2 cores.
    n_patients: int = bounded(600, 0, None, "()")
    # NIH images are 1024 x 1024; the demo's 512 still gives preprocess real work (a 2.3x area resize).
    image_size: int = bounded(512, 0, None, "()")
    label_noise: LabelNoiseConfig = field(default_factory=LabelNoiseConfig)


@dataclass(frozen=True)
class NihConfig:
    # Folder with the NIH data in the official (images/), Kaggle (images_0NN/images/) or sample
    # (sample/images/) layout; with `download: true`, where the archives are fetched and unpacked.
    path: str | None = None
    # Fetch the 12 official archives first (resumable, MD5-verified, ~45 GB; never twice).
    download: bool = False
    # Where the archives live, as <base_url>/<id>.gz: set a mirror's URL here.
    base_url: str = "https://nihcc.box.com/shared/static"
    # Metadata CSV as a path or URL, when it is not inside `path` (e.g. Data_Entry_2017_v2020.csv).
    metadata: str | None = None
    # Radiologist-adjudicated labels (Majkowska et al., Radiology 2020) as a path or URL of the
    # released CSV (NIH metadata columns + Fracture, Pneumothorax, Airspace opacity, Nodule or
    # mass as YES/NO, and Set Id); evaluate@ scores the test images it covers against them.
    expert_labels: str | None = None


@dataclass(frozen=True)
class DataConfig:
    source: Literal["phantom", "nih"] = "phantom"
    # What to do with metadata rows whose image file is missing: stop, or drop and count.
    missing_images: Literal["error", "skip"] = "error"
    # Images with no metadata row: leave them out (counted in metrics/split.json), or stop.
    orphan_images: Literal["ignore", "error"] = "ignore"
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    nih: NihConfig = field(default_factory=NihConfig)


@dataclass(frozen=True)
class SplitConfig:
    # official: test = NIH's test_list.txt, validation carved by patient from the rest (scores
    # comparable with published ones); patient: seeded stratified patient-wise split of all
    # images; auto: official for data.source nih, patient for the phantom.
    method: Literal["auto", "official", "patient"] = "auto"
    # Shares of images, assigned by whole patients (follow-ups never straddle splits).
    # patient: of all images; official: val_fraction of the non-test images (test_fraction unused).
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    # Keep only these views (AP films are mostly bedside films of sicker patients).
    views: tuple[str, ...] = ("PA", "AP")
    # Keep one seeded image per patient, so every test case is independent.
    one_per_patient: bool = False
    # Train on a seeded subsample of the training PATIENTS (validation and test unchanged), for
    # learning curves: a sweep over fractions x models.
    train_fraction: float = bounded(1.0, 0, 1, "(]")

    def resolved_method(self, source: str) -> str:
        """`auto` made concrete for a data source."""
        if self.method != "auto":
            return self.method
        return "official" if source == "nih" else "patient"


@dataclass(frozen=True)
class PreprocessConfig:
    # The cache resolution: 224 is what the seed models and ImageNet backbones expect.
    size: int = bounded(224, 0, None, "()")
    # 0 = all cores; decoding 1024 px PNGs is the slow part and parallelises well.
    workers: int = 0


@dataclass(frozen=True)
class AugmentConfig:
    # The seed's ImageDataGenerator settings (design note 001, C1.2).
    hflip: bool = True
    rotation_deg: float = 5.0
    shift_x: float = 0.1
    shift_y: float = 0.05
    zoom: float = 0.15
    # The seed's shear_range=0.1, which Keras reads as degrees: a shear of at most 0.1 degrees
    # is nearly a no-op, kept only so the augmentation matches the seed's.
    shear_deg: float = 0.1


@dataclass(frozen=True)
class TrainOverride:
    """Per-model replacements for `train.*` (unset = inherit), e.g. a higher lr for a ResNet."""

    epochs: int | None = None
    min_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    image_size: int | None = None
    optimizer: Literal["adamw", "adam", "sgd"] | None = None
    momentum: float | None = None
    scheduler: Literal["none", "cosine", "plateau", "step"] | None = None
    loss: Literal["bce", "weighted_bce", "focal"] | None = None
    grad_accum_steps: int | None = None
    pretrained: bool | Literal["auto"] | None = None
    pretrained_path: str | None = None
    freeze_backbone: bool | None = None


# The committed params.yaml's train.overrides (see there for the reasons).
DEFAULT_OVERRIDES: dict[str, TrainOverride] = {
    "cnn": TrainOverride(epochs=6),
    "vit_v1": TrainOverride(image_size=128, epochs=2, lr=2e-3),
    "resnet18": TrainOverride(epochs=6),
    "convnextv2_seed": TrainOverride(epochs=24, min_epochs=12),
    "vit_b16": TrainOverride(lr=1e-4),
    "vit_v2": TrainOverride(optimizer="sgd", lr=1e-2, weight_decay=1e-4),
    "efficientnet_b4": TrainOverride(image_size=380, freeze_backbone=True, lr=1e-3),
    "resnet50": TrainOverride(freeze_backbone=True, lr=1e-3),
    "densenet169": TrainOverride(freeze_backbone=True, lr=1e-3),
    "vgg16": TrainOverride(freeze_backbone=True, lr=1e-3),
    "mobilenetv2_100": TrainOverride(freeze_backbone=True, lr=1e-3),
}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = bounded(8, 0, None, "()")
    batch_size: int = bounded(32, 0, None, "()")
    # The seed's AdamW settings.
    lr: float = bounded(1e-3, 0, None, "()")
    weight_decay: float = 1e-6
    # Epochs without a better validation macro AUROC before stopping (best weights restored).
    patience: int = 3
    # Early stopping may end training only after this many epochs (Lightning's min_epochs): a
    # model whose validation AUROC stays flat at first (convnextv2_seed) is not stopped in its
    # flat start because a noisy first epoch happened to score best. 0 = from the first epoch.
    min_epochs: int = bounded(0, 0, None, "[)")
    # adamw (the seed's) | adam | sgd (with `momentum`; its weight_decay is plain L2, as ViT-v2's).
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    momentum: float = bounded(0.9, 0, 1, "[)")
    # Per-step learning-rate schedule: cosine decays to 0 by the last epoch, which settles the
    # weights in short CPU runs; none keeps the seed's constant rate.
    # plateau: lr / 10 when validation macro AUROC stalls (CheXNet); step: lr * step_gamma
    # every step_epochs epochs.
    scheduler: Literal["none", "cosine", "plateau", "step"] = "cosine"
    # Linear warm-up from lr/100 over this many epochs (fractions allowed), before any schedule.
    warmup_epochs: float = bounded(0.0, 0, None, "[)")
    step_epochs: int = bounded(3, 1, None, "[)")
    step_gamma: float = bounded(0.1, 0, 1, "(]")
    plateau_patience: int = bounded(1, 1, None, "[)")
    # bce | weighted_bce (pos_weight = negatives/positives of the train split) | focal.
    loss: Literal["bce", "weighted_bce", "focal"] = "bce"
    focal_alpha: float = bounded(0.25, 0, 1, "[]")
    focal_gamma: float = bounded(2.0, 0, None, "[)")
    # Binary label smoothing: targets t -> t(1-e) + e/2 (the labels are NLP-mined, ~90% right).
    label_smoothing: float = bounded(0.0, 0, 0.5, "[)")
    # uniform | findings: the seed's sampling, weight = number of findings + 0.04.
    sampling: Literal["uniform", "findings"] = "uniform"
    # Clip the global gradient norm (0 = off); accumulate gradients over N batches per step.
    grad_clip: float = bounded(0.0, 0, None, "[)")
    grad_accum_steps: int = bounded(1, 1, None, "[)")
    # Also checkpoint last.pt every N optimizer steps inside an epoch (0 = at epoch ends only),
    # so a killed run loses at most N steps.
    checkpoint_every_steps: int = bounded(0, 0, None, "[)")
    # torch.compile the model (CUDA; first epoch pays the compilation).
    compile: bool = False
    # Resolution the models see; the loader resizes the cache on the device when smaller.
    # 64 keeps the CPU demo short (vit_v1 overrides it); 224 (the cache's size) on a GPU node.
    image_size: int = bounded(64, 0, None, "()")
    # Caps batches per epoch (0 = all); for smoke tests and quick experiments.
    max_steps_per_epoch: int = 0
    num_workers: int = 0
    device: str = "auto"
    # auto: each model's design (ImageNet weights for the transfer models, vit_b16 and
    # densenet121; from scratch for the seed architectures and plain timm names) | true | false.
    # Weights come from timm's download cache (needs internet once) or `pretrained_path`.
    pretrained: bool | Literal["auto"] = "auto"
    # A local weights file (timm/torchvision state dict or one of our best.pt); usually per model.
    pretrained_path: str | None = None
    # Train only the head on top of a pretrained backbone (the seed froze its transfer backbones).
    freeze_backbone: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # model name -> replacements; train@<model> uses cfg.train_for(model).
    overrides: dict[str, TrainOverride] = field(default_factory=lambda: dict(DEFAULT_OVERRIDES))


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = bounded(64, 0, None, "()")
    # Percentile bootstrap over test PATIENTS (their follow-up images are correlated).
    bootstrap_resamples: int = bounded(1000, 100, None, "[)")
    # Second operating point: per class, the highest threshold reaching this validation sensitivity.
    sensitivity_target: float = bounded(0.9, 0, 1, "()")
    calibration_bins: int = bounded(10, 2, None, "[)")
    # Subgroups (sex, age, view, follow-up) with fewer test patients are reported as too small.
    subgroup_min_patients: int = bounded(20, 1, None, "[)")


@dataclass(frozen=True)
class ProfileConfig:
    """Efficiency measurement of each trained model (stage profile@<model>)."""

    # Timed forward passes are preceded by `warmup` untimed ones (allocator, cudnn autotune);
    # the median of `repeats` resists the odd slow pass on a shared machine.
    warmup: int = bounded(3, 0, None, "[)")
    repeats: int = bounded(10, 1, None, "[)")
    throughput_batch: int = bounded(32, 1, None, "[)")
    throughput_repeats: int = bounded(3, 1, None, "[)")
    device: str = "auto"


@dataclass(frozen=True)
class ExplainConfig:
    """Grad-CAM, box localisation and embeddings of each trained model (stage explain@<model>)."""

    batch_size: int = bounded(32, 1, None, "[)")
    # Overlays for this many test images, the same ones for every model (boxed images first).
    gradcam_images: int = bounded(8, 1, None, "[)")
    # CAM pixels at or above this fraction of the map's maximum form the region scored by IoU.
    cam_threshold: float = bounded(0.5, 0, 1, "()")
    # Barnes-Hut t-SNE takes minutes beyond a few thousand points: a seeded subsample above this.
    tsne_points: int = bounded(2000, 10, None, "[)")
    tsne_perplexity: float = bounded(30.0, 0, None, "()")


@dataclass(frozen=True)
class Config:
    # The data seed: split, phantom, label noise, bootstrap and every other data-side draw.
    seed: int = 42
    # Training seeds (init, augmentation, batch order): train@<model>-<seed> and evaluate@ run
    # once per seed, and the report gives the spread across them. Separate from `seed`, so that
    # adding a training seed changes neither the split nor the cache.
    train_seeds: tuple[int, ...] = (42,)
    # How train@<model> starts: "python", or e.g. "torchrun --standalone --nproc_per_node=4"
    # for data-parallel training on 4 GPUs (dvc.yaml puts it in front of pipeline/train.py).
    launcher: str = "python"
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    models: tuple[str, ...] = ("cnn", "vit_v1", "resnet18", "convnextv2_seed")

    def train_for(self, model_name: str) -> TrainConfig:
        """The training settings of one model: `train.*` with its overrides applied."""
        override = self.train.overrides.get(model_name)
        changes = (
            {}
            if override is None
            else {name: value for name, value in dataclasses.asdict(override).items() if value is not None}
        )
        return dataclasses.replace(self.train, overrides={}, **changes)


def _check_value(key: str, value: Any, annotation: Any) -> Any:
    """Coerce/validate one leaf against its annotation; raise ConfigError naming `key`."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [option for option in options if option is not type(None)]
        errors = []
        for option in inner:  # e.g. `bool | Literal["auto"]`: the first option that accepts it
            try:
                return _check_value(key, value, option)
            except ConfigError as error:
                errors.append(str(error).removeprefix(f"{key}: "))
        raise ConfigError(f"{key}: {' or '.join(errors)}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        item_type = typing.get_args(annotation)[1]
        return {str(name): _build(item_type, item, f"{key}.{name}") for name, item in value.items()}
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item_type = typing.get_args(annotation)[0]
        return tuple(_check_value(f"{key}[{i}]", item, item_type) for i, item in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        # YAML reads "1e-4" (no dot) as a string; accept it, as users will write it.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation} for {key}")  # programming error


def _suggest(key: str, names: list[str]) -> list[str]:
    """The likely intended key: a prefix of the typo (lr_rate -> lr), else the closest spelling."""
    prefixes = [name for name in names if key.startswith(name + "_") or name.startswith(key)]
    if prefixes:
        return [max(prefixes, key=len)]
    return difflib.get_close_matches(key, names, n=1)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            close = _suggest(str(key), names)
            hint = f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{full}'{hint}; valid keys here: {', '.join(names)}")
    values = {}
    for name in names:
        if name not in raw:
            continue
        full = f"{prefix}.{name}" if prefix else name
        annotation = hints[name]
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, raw[name], full)
        else:
            values[name] = _check_value(full, raw[name], annotation)
    return cls(**values)


def _range_problem(key: str, value: float, low: float | None, high: float | None, brackets: str) -> str | None:
    """None when `value` lies in the range, else the message naming `key`."""
    above = low is None or (value >= low if brackets[0] == "[" else value > low)
    below = high is None or (value <= high if brackets[1] == "]" else value < high)
    if above and below:
        return None
    if high is None:
        return f"{key} must be {'>=' if brackets[0] == '[' else '>'} {low}, got {value}"
    return f"{key} must be in {brackets[0]}{low}, {high}{brackets[1]}, got {value}"


def _ranges(prefix: str, section: Any, only: set[str] | None = None) -> list[str]:
    """The range problems of `section`'s :func:`bounded` fields (of those in `only`, if given)."""
    found = (
        _range_problem(f"{prefix}.{item.name}", getattr(section, item.name), *item.metadata["range"])
        for item in dataclasses.fields(section)
        if "range" in item.metadata and (only is None or item.name in only)
    )
    return [problem for problem in found if problem]


def _validate(cfg: Config) -> None:
    """Range checks that types cannot express."""
    problems = []
    fractions = cfg.split.val_fraction + cfg.split.test_fraction
    if not (0 < cfg.split.val_fraction < 1 and 0 < cfg.split.test_fraction < 1 and fractions < 1):
        problems.append("split.val_fraction and split.test_fraction must be in (0, 1) and sum below 1")
    problems += _ranges("train", cfg.train)
    for model_name, override in cfg.train.overrides.items():
        # Only the keys the override sets: a bad train.* value is reported once, under train.
        chosen = {name for name, value in dataclasses.asdict(override).items() if value is not None}
        problems += _ranges(f"train.overrides.{model_name}", cfg.train_for(model_name), chosen)
        # Only models that will be trained must fit the cache: the default params keep e.g.
        # efficientnet_b4's native 380 px ready for a user who raises preprocess.size.
        image_size = cfg.train_for(model_name).image_size
        if model_name in cfg.models and image_size > cfg.preprocess.size:
            problems.append(
                f"train.overrides.{model_name}.image_size ({image_size}) exceeds preprocess.size "
                f"({cfg.preprocess.size}): raise preprocess.size to at least {image_size} or lower the override"
            )
    sections = {
        "data.phantom": cfg.data.phantom,
        "data.phantom.label_noise": cfg.data.phantom.label_noise,
        "split": cfg.split,
        "preprocess": cfg.preprocess,
        "evaluate": cfg.evaluate,
        "profile": cfg.profile,
        "explain": cfg.explain,
    }
    for prefix, section in sections.items():
        problems += _ranges(prefix, section)
    if cfg.train.image_size > cfg.preprocess.size:
        problems.append(
            f"train.image_size ({cfg.train.image_size}) exceeds preprocess.size "
            f"({cfg.preprocess.size}): the cache cannot be upsampled honestly"
        )
    if cfg.data.source == "nih" and not cfg.data.nih.path:
        problems.append("data.source is 'nih' but data.nih.path is not set")
    if cfg.split.method == "official" and cfg.data.source != "nih":
        problems.append("split.method 'official' needs data.source: nih (the phantom has no official test list)")
    if not cfg.split.views or not set(cfg.split.views) <= {"PA", "AP"}:
        problems.append(f"split.views must be a non-empty subset of [PA, AP], got {list(cfg.split.views)}")
    if not cfg.launcher.strip():
        problems.append("launcher must not be empty (use python, or torchrun ... for DDP)")
    if not cfg.train_seeds:
        problems.append("train_seeds: the list is empty (give at least one training seed, e.g. [42])")
    if len(set(cfg.train_seeds)) != len(cfg.train_seeds):
        problems.append(f"train_seeds: duplicate seeds in {list(cfg.train_seeds)}")
    if not cfg.models:
        problems.append("models: the list is empty")
    if len(set(cfg.models)) != len(cfg.models):
        problems.append(f"models: duplicate names in {list(cfg.models)}")
    if problems:
        raise ConfigError("; ".join(problems))


def config_from_dict(raw: dict, source: str = "params") -> Config:
    """Build and validate a Config from an already-parsed mapping."""
    try:
        cfg = _build(Config, raw, "")
        _validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    return cfg


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read params.yaml into a validated :class:`Config`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file (run from the repository root)")
    with path.open(encoding="utf-8") as handle:
        try:
            raw = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from None
    restore = (
        f"restore it with `git checkout {path.name}` (a partial file is fine: keys left out take the committed values)"
    )
    if raw is None or raw == {}:
        raise ConfigError(f"{path}: empty params file; {restore}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (key: value), got a {type(raw).__name__}; {restore}")
    return config_from_dict(raw, source=str(path))


def config_to_dict(cfg: Config) -> dict:
    """The resolved config as plain data (saved next to outputs and logged to MLflow)."""
    data = dataclasses.asdict(cfg)
    data["models"] = list(cfg.models)
    data["train_seeds"] = list(cfg.train_seeds)
    return data


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """`{"train": {"lr": 1e-4}}` -> `{"train.lr": 1e-4}` for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat
