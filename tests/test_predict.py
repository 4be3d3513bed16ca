"""`cxr14 predict`: new images scored exactly as evaluate@ scores the cache, with the validation
thresholds stored in best.pt, and bad files named without stopping the others."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from cxr14.data.cache import open_split
from cxr14.data.images import prepare_for_model
from cxr14.data.phantom import generate_phantom
from cxr14.deploy.predict import POSITIVE_SUFFIX, load_model_folder, output_columns, predict_files
from cxr14.evaluation.metrics import operating_points, sensitivity_threshold
from cxr14.inference import predict
from cxr14.labels import LABELS, NUM_CLASSES
from cxr14.models import build_model
from cxr14.training.checkpoint import load_checkpoint, save_checkpoint
from tests.conftest import REPO_ROOT, cache_of, real_params

PREPROCESS_SIZE, IMAGE_SIZE = 96, 64
DEFAULT_MODELS = real_params()["models"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """Real phantom PNGs (256 px, NIH layout) and their 96 px cache."""
    root = tmp_path_factory.mktemp("predict")
    raw = root / "raw"
    generate_phantom(raw, n_patients=4, image_size=256, seed=3, workers=1, progress=False)
    return {"root": root, "raw": raw, "cache": cache_of(raw, root / "cache", size=PREPROCESS_SIZE)}


def model_folder(root: Path, name: str, seeds=(42,), points: dict | None = None) -> Path:
    """models/<name>/seed-<s>/ as train@ writes it (best.pt with operating points, config.json),
    holding randomly initialised weights (fixed torch seed)."""
    rng = np.random.default_rng(0)
    if points is None:
        targets = (rng.random((40, NUM_CLASSES)) < 0.3).astype(np.float32)
        points = operating_points(targets, rng.random((40, NUM_CLASSES)).astype(np.float32))
    for seed in seeds:
        torch.manual_seed(seed)
        bundle = build_model(name, NUM_CLASSES, IMAGE_SIZE, pretrained=False)
        folder = root / "models" / name / f"seed-{seed}"
        folder.mkdir(parents=True, exist_ok=True)
        checkpoint = {"model": bundle.model.state_dict(), "model_name": name, "epoch": 1, "image_size": IMAGE_SIZE}
        checkpoint["input"] = bundle.input_record()
        save_checkpoint(folder / "best.pt", {**checkpoint, "selected": True, "operating_points": points})
        config = {"model": name, "preprocess": {"size": PREPROCESS_SIZE}, "train_seeds": list(seeds)}
        (folder / "config.json").write_text(json.dumps(config))
    return root / "models" / name


def cache_scores(model, cache: Path) -> pd.DataFrame:
    """Scores of every cached image through inference.predict, as evaluate@ computes them."""
    frames = []
    for split in ("train", "val", "test"):
        images, index = open_split(cache, split)
        scores = predict(
            model.bundle, images, np.zeros((len(images), NUM_CLASSES)), 8, model.image_size, torch.device("cpu")
        )
        frames.append(pd.DataFrame(scores, columns=list(LABELS), index=index["image_id"]))
    return pd.concat(frames)


def test_a_phantom_png_gives_the_pixels_the_cache_holds(phantom):
    for split in ("train", "val", "test"):
        images, index = open_split(phantom["cache"], split)
        for row, image_id in enumerate(index["image_id"]):
            pixels, _ = prepare_for_model(phantom["raw"] / "images" / image_id, PREPROCESS_SIZE)
            np.testing.assert_array_equal(pixels, images[row], err_msg=image_id)


@pytest.mark.parametrize("name", DEFAULT_MODELS)
def test_a_phantom_png_scores_the_same_through_predict_as_through_the_cache(name, phantom, tmp_path):
    model = load_model_folder(model_folder(tmp_path, name))
    outcome = predict_files(model, [phantom["raw"] / "images"], batch_size=5)
    assert not outcome.failures and not outcome.warnings
    expected = cache_scores(model, phantom["cache"])
    got = outcome.table.set_index(outcome.table["image"].map(lambda path: Path(path).name))[list(LABELS)]
    assert sorted(got.index) == sorted(expected.index)
    # Same pixels (test above), same function; only the batches differ (5 here, 8 there), and
    # float32 kernels may round the last bit differently with the batch's make-up.
    np.testing.assert_allclose(got.loc[expected.index].to_numpy(np.float32), expected.to_numpy(), rtol=0, atol=1e-6)


def test_a_model_folder_reads_its_checkpoint_once(tmp_path, monkeypatch):
    from cxr14 import inference
    from cxr14.deploy import predict as predict_module

    folder = model_folder(tmp_path, "cnn")
    reads = []

    def counted(path, *args, **kwargs):
        reads.append(Path(path).name)
        return load_checkpoint(path, *args, **kwargs)

    monkeypatch.setattr(predict_module, "load_checkpoint", counted)
    monkeypatch.setattr(inference, "load_checkpoint", counted)
    model = load_model_folder(folder)
    assert reads == ["best.pt"] and model.name == "cnn"


def test_one_progress_bar_counts_every_image_read_and_no_bar_per_batch(phantom, tmp_path, monkeypatch):
    from cxr14 import inference
    from cxr14.deploy import predict as predict_module

    bars = []

    class Bar:
        def __init__(self, iterable=None, **kwargs):
            self.iterable, self.kwargs, self.n = iterable, kwargs, 0
            bars.append(self)

        def __iter__(self):
            return iter(self.iterable)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, count):
            self.n += count

    monkeypatch.setattr(predict_module, "progress", Bar)
    monkeypatch.setattr(inference, "progress", Bar)
    monkeypatch.setattr(predict_module, "CHUNK", 7)  # several chunks
    (tmp_path / "broken.png").write_bytes(b"not a png")  # counted although it fails
    images = sorted((phantom["raw"] / "images").glob("*.png"))[:20]
    model = load_model_folder(model_folder(tmp_path, "cnn"))
    outcome = predict_files(model, [*images, tmp_path / "broken.png"], batch_size=5)
    assert len(outcome.table) == 20 and len(outcome.failures) == 1
    shown = [bar for bar in bars if not bar.kwargs.get("disable_bar")]
    assert len(shown) == 1 and shown[0].kwargs["total"] == 21 and shown[0].kwargs["unit"] == "img"
    assert shown[0].n == 21


def test_calls_follow_the_chosen_operating_point(phantom, tmp_path):
    model = load_model_folder(model_folder(tmp_path, "cnn"))
    for point, sensitivity in (("max_f1", 0.9), ("sensitivity", 0.8)):
        outcome = predict_files(model, [phantom["raw"] / "images"], operating_point=point, sensitivity=sensitivity)
        thresholds = model.thresholds(point, sensitivity)
        for name in LABELS:
            calls = (outcome.table[name].to_numpy() >= thresholds[name]).astype(int)
            np.testing.assert_array_equal(outcome.table[name + POSITIVE_SUFFIX].to_numpy(), calls)
    positives = model.operating_points["positive_scores"]["Effusion"]
    assert model.thresholds("sensitivity", 0.8)["Effusion"] == sensitivity_threshold(positives, 0.8)
    assert model.thresholds("max_f1")["Effusion"] == model.operating_points["max_f1"]["Effusion"]
    assert list(outcome.table.columns) == output_columns()


def test_the_parent_folder_means_the_first_training_seed(tmp_path):
    parent = model_folder(tmp_path, "cnn", seeds=(7, 3))  # train_seeds [7, 3]: 7 comes first
    assert load_model_folder(parent).seed == 7
    assert load_model_folder(parent, seed=3).folder == parent / "seed-3"
    with pytest.raises(ValueError, match=r"no model trained with seed 5; trained seeds: \[3, 7\]"):
        load_model_folder(parent, seed=5)


def test_a_model_folder_without_thresholds_is_refused_with_the_fix(tmp_path):
    folder = model_folder(tmp_path, "cnn") / "seed-42"
    checkpoint = load_checkpoint(folder / "best.pt")
    del checkpoint["operating_points"]
    save_checkpoint(folder / "best.pt", checkpoint)
    with pytest.raises(ValueError, match=r"best.pt: holds no validation thresholds.*dvc repro -f train@cnn-42"):
        load_model_folder(folder)


def test_weights_trained_on_other_input_normalisation_are_refused_naming_the_file(tmp_path):
    """cnn's registered normalisation changed (2026-12-03): a best.pt that learned on the plain /255
    input would be scored on centred input without a word; its recorded mean/std make that an error."""
    folder = model_folder(tmp_path, "cnn") / "seed-42"
    checkpoint = load_checkpoint(folder / "best.pt")
    assert checkpoint["input"] == {"in_chans": 3, "mean": [0.5], "std": [0.25]}
    checkpoint["input"] = {"in_chans": 3, "mean": [0.0], "std": [1.0]}
    save_checkpoint(folder / "best.pt", checkpoint)
    with pytest.raises(
        ValueError, match=r"seed-42/best.pt: these weights were trained on input with in_chans/mean/std 3/\[0.0\]/"
    ) as error:
        load_model_folder(folder)
    assert "retrain the model (dvc repro)" in str(error.value)


def test_a_checkpoint_from_before_the_record_loads_with_a_warning(tmp_path, caplog):
    folder = model_folder(tmp_path, "cnn") / "seed-42"
    checkpoint = load_checkpoint(folder / "best.pt")
    del checkpoint["input"]
    save_checkpoint(folder / "best.pt", checkpoint)
    caplog.set_level("WARNING", logger="cxr14.inference")
    assert load_model_folder(folder).name == "cnn"
    warning = [r.getMessage() for r in caplog.records if "best.pt: written before" in r.getMessage()]
    assert warning and "mean [0.5], std [0.25]) unchecked" in warning[0] and "retrain it" in warning[0]


def cxr14(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The `cxr14` command as installed (python -m cxr14 runs the same main())."""
    return subprocess.run([sys.executable, "-m", "cxr14", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_names_bad_files_predicts_the_others_and_fails(phantom, tmp_path):
    images = sorted((phantom["raw"] / "images").glob("*.png"))[:2]
    (tmp_path / "broken.png").write_bytes(images[0].read_bytes()[:200])  # truncated PNG
    (tmp_path / "notes.txt").write_text("not an image")
    flat = np.full((300, 300), 128, np.uint8)  # a blank frame: nothing like a radiograph
    cv2.imwrite(str(tmp_path / "blank.png"), flat)
    folder = model_folder(tmp_path, "cnn")
    bad = [tmp_path / "broken.png", tmp_path / "notes.txt", tmp_path / "blank.png"]
    result = cxr14(
        "predict", "--model", str(folder), *map(str, images + bad), "--out", str(tmp_path / "p.csv"), cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    for path in bad:
        assert f"error: {path}" in result.stderr
        assert f"{path}: {path}" not in result.stderr  # named once per line
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table["image"]) == [str(path) for path in images]
    assert list(table.columns) == output_columns()
    saved = json.loads((tmp_path / "p.thresholds.json").read_text())
    assert saved["operating_point"] == "max_f1" and saved["seed"] == 42 and set(saved["thresholds"]) == set(LABELS)
    assert "2 images predicted" in result.stderr and "3 failed" in result.stderr


def test_cli_success_gradcam_overlays_and_stdout(phantom, tmp_path):
    everything_positive = operating_points(np.ones((4, NUM_CLASSES)), np.full((4, NUM_CLASSES), 0.0, np.float32))
    folder = model_folder(tmp_path, "cnn", points=everything_positive)
    image = sorted((phantom["raw"] / "images").glob("*.png"))[0]
    result = cxr14("predict", "--model", str(folder), str(image), "--gradcam", str(tmp_path / "cams"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(pd.io.common.StringIO(result.stdout))
    assert len(table) == 1 and table[[name + POSITIVE_SUFFIX for name in LABELS]].to_numpy().all()
    overlays = sorted((tmp_path / "cams").glob("*.png"))
    assert len(overlays) == NUM_CLASSES
    overlay = cv2.imread(str(overlays[0]))
    assert overlay.shape == (PREPROCESS_SIZE, PREPROCESS_SIZE, 3)
    # An overlay without heat is the gray radiograph (B = G = R); the summary counts them.
    gray = sum(1 for path in overlays if len({channel.tobytes() for channel in cv2.split(cv2.imread(str(path)))}) == 1)
    if gray:
        assert f"({gray} with an empty map: no location raised the score" in result.stderr
    else:
        assert "empty map" not in result.stderr


def test_cli_refuses_a_missing_model_folder_in_one_line(tmp_path):
    result = cxr14("predict", "--model", str(tmp_path / "nowhere"), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "no trained model here" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--batch-size", "0", "must be a whole number >= 1, got 0"),
        ("--batch-size", "eight", "must be a whole number >= 1, got 'eight'"),
        ("--sensitivity", "2", "must be a number in (0, 1], got 2"),
        ("--sensitivity", "0", "must be a number in (0, 1], got 0"),
    ],
)
def test_cli_refuses_a_bad_setting_before_loading_anything(tmp_path, option, value, says):
    result = cxr14("predict", "--model", str(tmp_path / "nowhere"), str(tmp_path), option, value, cwd=tmp_path)
    assert result.returncode == 2  # argparse's exit for a bad argument: before the model folder is read
    assert f"argument {option}: {says}" in result.stderr and "Traceback" not in result.stderr


def test_cli_refuses_a_sensitivity_without_its_operating_point(tmp_path):
    """--sensitivity alone would be ignored (max-F1 calls): refused, before the model is read."""
    result = cxr14("predict", "--model", str(tmp_path / "nowhere"), str(tmp_path), "--sensitivity", "0.8", cwd=tmp_path)
    assert result.returncode == 2 and "--sensitivity sets the target of --operating-point sensitivity" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_prints_its_version():
    from importlib.metadata import version

    result = cxr14("--version", cwd=REPO_ROOT)
    assert result.returncode == 0 and result.stdout.strip() == f"cxr14 {version('cxr14')}"


def test_console_script_is_installed_with_help():
    script = Path(sys.executable).parent / "cxr14"
    result = subprocess.run([str(script), "predict", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0
    assert "max_f1" in result.stdout and "not a medical device" in result.stdout


def test_best_pt_thresholds_are_training_validation_choices_and_evaluates(tmp_path):
    """Training stores the operating points of its best epoch's validation scores; evaluate@,
    export@ and cxr14 predict all take their thresholds from there (one source: recomputing them
    at another batch size moves the last float32 bits)."""
    from cxr14.config import config_from_dict
    from cxr14.evaluation.metrics import max_f1_thresholds
    from cxr14.stages.evaluate import evaluate_model
    from tests.test_stage_outputs import _params, train_tiny_cnn

    cfg = config_from_dict(_params())
    made = train_tiny_cnn(tmp_path, _params())
    folder = made["model_dir"] / "seed-42"
    points = load_checkpoint(folder / "best.pt")["operating_points"]
    model = load_model_folder(made["model_dir"])
    images, index = open_split(made["cache"], "val")
    labels = index[list(LABELS)].to_numpy(np.float32)
    scores = predict(model.bundle, images, labels, cfg.train.batch_size, model.image_size, torch.device("cpu"))
    np.testing.assert_allclose(
        list(points["max_f1"].values()), list(max_f1_thresholds(labels, scores).values()), atol=1e-6
    )
    assert points["validation_images"] == len(labels)
    metrics = evaluate_model(cfg, "cnn", made["cache"], folder)["metrics"]
    assert metrics["thresholds"] == points["max_f1"] == model.thresholds("max_f1")
    target = metrics["sensitivity_target"]
    by_sensitivity = {name: sensitivity_threshold(points["positive_scores"][name], target) for name in LABELS}
    assert by_sensitivity == metrics["sensitivity_thresholds"] == model.thresholds("sensitivity", target)
