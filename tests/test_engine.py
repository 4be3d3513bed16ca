"""Training and evaluation on a tiny real cache, tracked in a real SQLite MLflow store."""

import contextlib
import copy
import json
from collections.abc import Iterator

import mlflow
import pytest

from cxr14.config import config_from_dict
from cxr14.stages.evaluate import evaluate_model, log_to_run
from cxr14.tracking import EXPERIMENT, TrackingUnavailableError
from cxr14.training.checkpoint import load_checkpoint
from cxr14.training.engine import train_model
from tests.conftest import tiny_params


def test_train_then_evaluate_into_one_mlflow_run(tiny_cache, tmp_path, mlflow_store, caplog):
    cfg = config_from_dict(tiny_params(**{"train.image_size": 32, "preprocess.size": 32}))
    out_dir = tmp_path / "models" / "vit_v1"
    result = train_model(cfg, "vit_v1", tiny_cache, out_dir, seed=42)
    for name in ("best.pt", "last.pt", "history.csv", "train.json", "config.json", "mlflow_run.json"):
        assert (out_dir / name).is_file(), name
    assert result.epochs_run == 2 and len(result.history) == 2
    saved = json.loads((out_dir / "config.json").read_text())
    assert saved["model"] == "vit_v1" and saved["train"]["lr"] == cfg.train_for("vit_v1").lr

    caplog.set_level("INFO", logger="cxr14.stages.evaluate")
    record = evaluate_model(cfg, "vit_v1", tiny_cache, out_dir)
    assert record["metrics"]["n_images"] == len(record["predictions"])
    low, high = record["metrics"]["intervals"]["macro_auroc"]
    headline = f"vit_v1: test macro AUROC {record['metrics']['macro_auroc']:.4f} [{low:.4f}, {high:.4f}]"
    assert any(r.getMessage().startswith(headline) for r in caplog.records)
    log_to_run(record, out_dir / "mlflow_run.json")

    client = mlflow.tracking.MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == json.loads((out_dir / "mlflow_run.json").read_text())["run_id"]
    assert run.data.params["train.lr"] == str(cfg.train_for("vit_v1").lr) and run.data.tags["model"] == "vit_v1"
    val_history = client.get_metric_history(run.info.run_id, "val_macro_auroc")
    assert [m.step for m in val_history] == [1, 2]
    assert "test_macro_auroc" in run.data.metrics or "test_macro_f1" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"history.csv", "checkpoint", "config.json"} <= artifacts


@contextlib.contextmanager
def killed_at_second_validation(monkeypatch) -> Iterator[None]:
    """The block's training dies in the middle of epoch 2 (after its training steps, before its
    checkpoint), as a kill would; the subprocess kill -9 version is in test_training_processes."""
    import cxr14.training.engine as engine

    real_validate, calls = engine._validate, []

    def crash_on_second_validation(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(engine, "_validate", crash_on_second_validation)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(engine, "_validate", real_validate)


def test_interrupted_run_resumes_and_matches_uninterrupted(tiny_cache, tmp_path, mlflow_store, monkeypatch):
    cfg = config_from_dict(tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.epochs": 3}))
    straight = train_model(cfg, "cnn", tiny_cache, tmp_path / "straight", seed=42)

    with killed_at_second_validation(monkeypatch):
        train_model(cfg, "cnn", tiny_cache, tmp_path / "killed", seed=42)

    resumed = train_model(cfg, "cnn", tiny_cache, tmp_path / "killed", seed=42)
    assert resumed.epochs_run == 3
    assert [row["val_loss"] for row in resumed.history] == pytest.approx(
        [row["val_loss"] for row in straight.history], rel=1e-5
    )
    client = mlflow.tracking.MlflowClient(mlflow_store)
    # one run for the straight model, one (continued, not duplicated) for the interrupted one
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 2
    assert [m.step for m in client.get_metric_history(resumed.run_id, "val_macro_auroc")] == [1, 2, 3]


def test_unreachable_tracking_server_fails_before_training(tiny_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    cfg = config_from_dict(tiny_params(**{"train.image_size": 32, "preprocess.size": 32}))
    with pytest.raises(TrackingUnavailableError, match=r"http://127.0.0.1:9 is unreachable"):
        train_model(cfg, "cnn", tiny_cache, tmp_path / "models" / "cnn", seed=42)
    assert not (tmp_path / "models" / "cnn" / "last.pt").exists()


def test_frozen_pretrained_backbone_stays_exactly_as_loaded(tiny_cache, tmp_path, mlflow_store):
    """The seed's transfer recipe: weights from a local file, backbone frozen (BN statistics too), head trained."""
    import timm
    import torch

    torch.manual_seed(7)
    source = timm.create_model("mobilenetv2_100", num_classes=0, global_pool="")
    weights_file = tmp_path / "mobilenetv2_100.pth"
    torch.save(source.state_dict(), weights_file)
    overrides = {"mobilenetv2_100": {"pretrained_path": str(weights_file), "freeze_backbone": True, "lr": 1e-2}}
    cfg = config_from_dict(
        tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.epochs": 1, "train.overrides": overrides})
    )
    out_dir = tmp_path / "models" / "mobilenetv2_100"
    train_model(cfg, "mobilenetv2_100", tiny_cache, out_dir, seed=42)

    trained = load_checkpoint(out_dir / "best.pt")["model"]
    for key, value in source.state_dict().items():
        assert torch.equal(trained[f"backbone.{key}"], value), key  # incl. BatchNorm running statistics
    summary = json.loads((out_dir / "train.json").read_text())
    assert summary["weights"] == str(weights_file)
    assert 0 < summary["params_trainable"] < summary["params_total"]
    head = [value for key, value in trained.items() if key.startswith("head.")]
    assert head and sum(value.numel() for value in head) == summary["params_trainable"]


def test_freezing_a_randomly_initialised_backbone_is_refused(tiny_cache, tmp_path, mlflow_store):
    overrides = {"mobilenetv2_100": {"pretrained": False, "freeze_backbone": True}}
    cfg = config_from_dict(tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.overrides": overrides}))
    with pytest.raises(ValueError, match="freeze_backbone is true but the backbone has no pretrained weights"):
        train_model(cfg, "mobilenetv2_100", tiny_cache, tmp_path / "out", seed=42)
    assert not (tmp_path / "out" / "last.pt").exists()


@pytest.mark.parametrize(("name", "kind"), [("adamw", "AdamW"), ("adam", "Adam"), ("sgd", "SGD")])
def test_optimizer_choice_covers_trainable_parameters_only(name, kind):
    import torch

    from cxr14.training.engine import make_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    train = config_from_dict(tiny_params(**{"train.optimizer": name})).train
    optimizer = make_optimizer(model, train)
    assert type(optimizer).__name__ == kind
    assert [p for group in optimizer.param_groups for p in group["params"]] == list(model[1].parameters())
    if name == "sgd":
        assert optimizer.param_groups[0]["momentum"] == pytest.approx(train.momentum)
    assert optimizer.defaults["fused"] is True  # CPU parameters: torch's one-kernel update


@pytest.mark.parametrize(("name", "kind"), [("adamw", "AdamW"), ("adam", "Adam"), ("sgd", "SGD")])
def test_the_fused_update_takes_the_step_of_torchs_loop(name, kind):
    """make_optimizer's fused update and torch's per-parameter loop agree over a few steps;
    where fused is unavailable (here: a parameter on the meta device) torch chooses."""
    import torch

    from cxr14.training.engine import make_optimizer
    from cxr14.training.schedule import fused_update

    train = config_from_dict(tiny_params(**{"train.optimizer": name, "train.weight_decay": 1e-2})).train
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    loop_model = copy.deepcopy(fused_model)
    start = copy.deepcopy(fused_model[0].weight)
    fused = make_optimizer(fused_model, train)
    extra = {"momentum": train.momentum} if name == "sgd" else {}
    loop = getattr(torch.optim, kind)(
        loop_model.parameters(), lr=train.lr, weight_decay=train.weight_decay, foreach=False, **extra
    )
    for _ in range(3):
        batch = torch.randn(5, 8)
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            optimizer.zero_grad()
            model(batch).square().mean().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused_model[0].weight, start)  # the steps moved the weights
    assert fused_update([torch.nn.Parameter(torch.zeros(2, device="meta"))]) is None


def test_gradient_accumulation_equals_the_larger_batch(tiny_cache, tmp_path, mlflow_store):
    """Two accumulated batches of 2 take the same step as one batch of 4 (no dropout/BN in cnn)."""
    import torch

    still = {"hflip": False, "rotation_deg": 0.0, "shift_x": 0.0, "shift_y": 0.0, "zoom": 0.0, "shear_deg": 0.0}
    base = {
        "train.image_size": 32,
        "preprocess.size": 32,
        "train.epochs": 1,
        "train.scheduler": "none",
        "train.augment": still,
        "train.lr": 1e-3,
    }
    big = config_from_dict(tiny_params(**base, **{"train.batch_size": 4}))
    accumulated = config_from_dict(tiny_params(**base, **{"train.batch_size": 2, "train.grad_accum_steps": 2}))
    train_model(big, "cnn", tiny_cache, tmp_path / "big", seed=42)
    train_model(accumulated, "cnn", tiny_cache, tmp_path / "accumulated", seed=42)
    big_weights = load_checkpoint(tmp_path / "big" / "last.pt")["model"]
    accumulated_weights = load_checkpoint(tmp_path / "accumulated" / "last.pt")["model"]
    # Summing two half-batch gradients rounds apart from the whole batch's by ~1e-7, which Adam's
    # normalised steps carry to ~2e-6 over the epoch (cnn's centred input, 2026-12-03); a step per
    # half batch instead of an accumulated one moves the weights by ~6e-3.
    for key, value in big_weights.items():
        assert torch.allclose(accumulated_weights[key], value, atol=1e-5), key
    from cxr14.models import build_model

    torch.manual_seed(big.seed)  # the engine's initialisation: the step really moved the weights
    initial = build_model("cnn", 15, 32, pretrained=False).model.state_dict()
    assert not all(torch.allclose(initial[key], value) for key, value in big_weights.items())


def test_focal_loss_weighted_sampling_and_plateau_schedule_train_end_to_end(tiny_cache, tmp_path, mlflow_store):
    settings = {
        "train.image_size": 32,
        "preprocess.size": 32,
        "train.loss": "focal",
        "train.sampling": "findings",
        "train.scheduler": "plateau",
        "train.warmup_epochs": 0.5,
        "train.grad_clip": 1.0,
        "train.label_smoothing": 0.1,
    }
    cfg = config_from_dict(tiny_params(**settings))
    result = train_model(cfg, "cnn", tiny_cache, tmp_path / "cnn", seed=42)
    assert result.epochs_run == 2
    assert all(row["train_loss"] > 0 and row["lr"] > 0 for row in result.history)
    saved = json.loads((tmp_path / "cnn" / "config.json").read_text())
    assert (saved["train"]["loss"], saved["train"]["sampling"]) == ("focal", "findings")


@pytest.mark.parametrize("kind", ["focal", "weighted_bce"])
def test_validation_loss_is_the_training_loss_without_label_smoothing(kind, tiny_cache, tmp_path, mlflow_store):
    """history.val_loss = the configured loss (its pos_weight from the train split, its focal
    alpha/gamma) at label_smoothing 0, recomputed here from the saved weights on the val split."""
    import torch

    from cxr14.data.cache import open_split, split_labels
    from cxr14.inference import predict
    from cxr14.models import build_model
    from cxr14.training.losses import make_loss

    settings = {
        "train.image_size": 32,
        "preprocess.size": 32,
        "train.epochs": 1,
        "train.loss": kind,
        "train.label_smoothing": 0.2,
        "train.focal_alpha": 0.4,
        "train.focal_gamma": 1.5,
    }
    cfg = config_from_dict(tiny_params(**settings))
    result = train_model(cfg, "cnn", tiny_cache, tmp_path / "cnn", seed=42)

    bundle = build_model("cnn", 15, 32, pretrained=False)
    bundle.model.load_state_dict(load_checkpoint(tmp_path / "cnn" / "last.pt")["model"])
    val_images, val_index = open_split(tiny_cache, "val")
    _, train_index = open_split(tiny_cache, "train")
    val_labels = torch.from_numpy(split_labels(val_index)).double()
    scores = predict(bundle, val_images, split_labels(val_index), 16, 32, torch.device("cpu"))
    logits = torch.logit(torch.from_numpy(scores).double())

    def loss(smoothing: float, loss_kind: str = kind) -> float:
        return float(
            make_loss(
                loss_kind,
                train_labels=split_labels(train_index),
                focal_alpha=0.4,
                focal_gamma=1.5,
                label_smoothing=smoothing,
            )(logits, val_labels)
        )

    val_loss = result.history[0]["val_loss"]
    assert val_loss == pytest.approx(loss(0.0), rel=1e-4)
    assert val_loss != pytest.approx(loss(0.2), rel=1e-2)  # not the smoothed objective
    assert val_loss != pytest.approx(loss(0.0, "bce"), rel=1e-2)  # not plain BCE either


def _validation_with_auroc(monkeypatch, aurocs):
    """Make epoch i's validation report AUROC aurocs[i] (None: the real one), keeping its real loss."""
    import cxr14.training.engine as engine

    real_validate, calls = engine._validate, []

    def validate(*args, **kwargs):
        loss, auroc, scores = real_validate(*args, **kwargs)
        calls.append(1)
        wanted = aurocs[len(calls) - 1]
        return loss, auroc if wanted is None else wanted, scores

    monkeypatch.setattr(engine, "_validate", validate)


@pytest.mark.parametrize(
    ("aurocs", "best"),
    [([float("nan"), 0.6, 0.7], 3), ([0.6, float("nan"), 0.5], 1), ([float("nan"), 0.7, float("nan")], 2)],
)
def test_an_epoch_with_undefined_validation_auroc_is_never_the_best(
    aurocs, best, tiny_cache, tmp_path, mlflow_store, monkeypatch, caplog
):
    _validation_with_auroc(monkeypatch, aurocs)
    cfg = config_from_dict(tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.epochs": 3}))
    caplog.set_level("INFO", logger="cxr14.training.engine")
    result = train_model(cfg, "cnn", tiny_cache, tmp_path / "cnn", seed=42)
    closing = f"best epoch {best} (validation macro AUROC {aurocs[best - 1]:.4f}) in {tmp_path / 'cnn' / 'best.pt'}"
    assert any(r.getMessage().startswith("cnn: 3 epochs in ") and closing in r.getMessage() for r in caplog.records)
    assert result.epochs_run == 3
    assert result.best_epoch == best and result.best_val_auroc == aurocs[best - 1]
    summary = json.loads((tmp_path / "cnn" / "train.json").read_text())
    assert summary["best_epoch"] == best and summary["best_val_macro_auroc"] == aurocs[best - 1]
    checkpoint = load_checkpoint(tmp_path / "cnn" / "best.pt")
    assert (checkpoint["epoch"], checkpoint["selected"]) == (best, True)
    assert checkpoint["input"] == {"in_chans": 3, "mean": [0.5], "std": [0.25]}  # what the weights learned on


def test_undefined_auroc_counts_as_a_bad_epoch_for_patience(tiny_cache, tmp_path, mlflow_store, monkeypatch):
    _validation_with_auroc(monkeypatch, [0.6, float("nan"), 0.9])
    cfg = config_from_dict(
        tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.epochs": 3, "train.patience": 1})
    )
    result = train_model(cfg, "cnn", tiny_cache, tmp_path / "cnn", seed=42)
    assert (result.epochs_run, result.best_epoch) == (2, 1)


@pytest.mark.parametrize(
    ("min_epochs", "epochs_run"),
    [(0, 3), (5, 5), (6, 6)],  # without it, the flat start ends training after patience's 2 bad epochs
)
def test_early_stopping_waits_for_min_epochs_and_then_stops_at_once(
    min_epochs, epochs_run, tiny_cache, tmp_path, mlflow_store, monkeypatch
):
    """A noisy first epoch scores best, then a flat start: patience is used up at epoch 3, but with
    min_epochs training goes on; at min_epochs with no better epoch since, it stops there (an
    improvement from epoch 7 on comes too late: min_epochs, not longer patience)."""
    _validation_with_auroc(monkeypatch, [0.55, 0.50, 0.51, 0.52, 0.53, 0.54, 0.60, 0.62])
    params = {"train.image_size": 32, "preprocess.size": 32, "train.epochs": 8, "train.patience": 2}
    cfg = config_from_dict(tiny_params(**params, **{"train.overrides": {"cnn": {"min_epochs": min_epochs}}}))
    assert cfg.train_for("cnn").min_epochs == min_epochs
    result = train_model(cfg, "cnn", tiny_cache, tmp_path / "cnn", seed=42)
    assert (result.epochs_run, result.best_epoch) == (epochs_run, 1)


def test_min_epochs_lets_a_late_improvement_reset_patience(tiny_cache, tmp_path, mlflow_store, monkeypatch):
    _validation_with_auroc(monkeypatch, [0.55, 0.50, 0.51, 0.58, 0.57, 0.56, 0.55, 0.54])
    params = {"train.image_size": 32, "preprocess.size": 32, "train.epochs": 8, "train.patience": 2}
    cfg = config_from_dict(tiny_params(**params, **{"train.min_epochs": 4}))
    result = train_model(cfg, "cnn", tiny_cache, tmp_path / "cnn", seed=42)
    assert (result.epochs_run, result.best_epoch) == (6, 4)  # best at 4, two bad epochs after it


def test_no_epoch_with_defined_validation_auroc_selects_nothing_and_says_so(
    tiny_cache, tmp_path, mlflow_store, monkeypatch, caplog
):
    import logging
    import math

    import torch

    _validation_with_auroc(monkeypatch, [float("nan"), float("nan")])
    caplog.set_level(logging.WARNING, logger="cxr14.training.engine")
    cfg = config_from_dict(tiny_params(**{"train.image_size": 32, "preprocess.size": 32, "train.epochs": 2}))
    out_dir = tmp_path / "cnn"
    result = train_model(cfg, "cnn", tiny_cache, out_dir, seed=42)
    assert result.epochs_run == 2 and result.best_epoch == 0 and math.isnan(result.best_val_auroc)
    summary = json.loads((out_dir / "train.json").read_text())
    assert summary["best_epoch"] == 0 and summary["best_val_macro_auroc"] is None
    assert "undefined in all 2 epochs" in summary["selection"]
    assert any("undefined in all 2 epochs" in r.getMessage() for r in caplog.records)
    best = load_checkpoint(out_dir / "best.pt")
    last = load_checkpoint(out_dir / "last.pt")
    assert best["selected"] is False and best["epoch"] == 2 and math.isnan(best["val_macro_auroc"])
    assert best["input"] == {"in_chans": 3, "mean": [0.5], "std": [0.25]}
    assert all(torch.equal(best["model"][key], value) for key, value in last["model"].items())


def test_an_override_that_replaces_a_general_setting_is_named():
    from cxr14.training.engine import shadowed_settings

    cfg = config_from_dict(tiny_params(**{"train.lr": 3e-4, "train.overrides": {"resnet18": {"lr": 1e-3}}}))
    notes = shadowed_settings(cfg, "resnet18")
    assert notes == [
        "resnet18: train.overrides.resnet18.lr = 0.001 replaces train.lr = 0.0003 "
        "(set -S train.overrides.resnet18.lr=... to change it)"
    ]
    assert shadowed_settings(cfg, "cnn") == []
    same = config_from_dict(tiny_params(**{"train.lr": 1e-3, "train.overrides": {"resnet18": {"lr": 1e-3}}}))
    assert shadowed_settings(same, "resnet18") == []
