"""Settings that used to be accepted and then ignored or misread now stop the stage in one line (exit 2).

Each runs a real stage script on real files: a misspelled model under `train.overrides` or in
`models:`, a cache built at another size than params.yaml says, a cache smaller than the size a
model was trained at, and an empty params file.
"""

import json
from pathlib import Path

import yaml

from tests.conftest import tiny_params
from tests.test_cli import run_stage


def _params(tmp_path, **overrides):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny_params(**overrides)))
    return path


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def _train(model: str, params: Path, cache: Path, root: Path):
    """pipeline/train.py for `model` (seed 42) into root/models/<model>."""
    return run_stage(
        "train.py",
        model,
        "--seed",
        "42",
        "--params",
        str(params),
        "--cache",
        str(cache),
        "--out",
        str(root / "models" / model),
    )


def test_misspelled_model_under_overrides_stops_training(tmp_path):
    params = _params(tmp_path, **{"train.overrides.convnextv2_sed": {"lr": 1e3}})
    result = _train("cnn", params, tmp_path / "cache", tmp_path)
    error = _one_line_error(result)
    assert (
        f"error: {params}: train.overrides: unknown model 'convnextv2_sed' (did you mean 'convnextv2_seed'?); "
        "valid names: cnn, "
    ) in error
    assert "or any timm model name, e.g. timm:convnext_tiny" in error
    assert not (tmp_path / "models").exists()


def test_unknown_model_in_models_stops_its_stage_in_one_line(tmp_path):
    params = _params(tmp_path, models=["cnn", "convnextv2_sed"])
    result = _train("convnextv2_sed", params, tmp_path / "cache", tmp_path)
    assert "models: unknown model 'convnextv2_sed' (did you mean 'convnextv2_seed'?)" in _one_line_error(result)
    assert not (tmp_path / "models").exists()


def test_training_refuses_a_cache_built_at_another_size(tiny_cache, tmp_path):
    # The cache holds 32 px images; params say 64 for both the cache and the model.
    params = _params(tmp_path, **{"preprocess.size": 64, "train.image_size": 64})
    result = _train("cnn", params, tiny_cache, tmp_path)
    error = _one_line_error(result)
    assert (
        f"{tiny_cache / 'cache.json'}: the cache was built at 32 px but preprocess.size is 64 in {params}: "
        "the cache is stale; rebuild it with `dvc repro preprocess`"
    ) in error
    assert not (tmp_path / "models").exists()


def test_evaluation_refuses_a_cache_smaller_than_the_trained_model(tiny_cache, tmp_path):
    params = _params(tmp_path, **{"preprocess.size": 32, "train.image_size": 32})
    model_dir = tmp_path / "models" / "cnn"
    seed_dir = model_dir / "seed-42"  # train_seeds: [42]
    seed_dir.mkdir(parents=True)
    (seed_dir / "train.json").write_text(json.dumps({"model": "cnn", "image_size": 64}))
    (seed_dir / "best.pt").write_bytes(b"")  # never opened: the size check comes first
    result = run_stage(
        "evaluate.py",
        "cnn",
        "--params",
        str(params),
        "--cache",
        str(tiny_cache),
        "--model-dir",
        str(model_dir),
        "--metrics",
        str(tmp_path / "m.json"),
        "--details",
        str(tmp_path / "d.json"),
        "--roc",
        str(tmp_path / "roc.csv"),
        "--curves",
        str(tmp_path / "curves.csv"),
    )
    assert f"the model in {seed_dir} was trained at 64 px" in _one_line_error(result)


def test_empty_params_file_stops_the_stage(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("# nothing left\n")
    result = run_stage("split.py", "--params", str(params), "--raw", str(tmp_path))
    assert _one_line_error(result) == (
        f"error: {params}: empty params file; restore it with `git checkout "
        "params.yaml` (a partial file is fine: keys left out take the committed values)"
    )
