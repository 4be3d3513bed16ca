"""Training seeds: one model per seed, evaluate@ over all of them (issue 14, point 1).

A tiny cnn is trained twice in-process (seeds 42 and 7) against a real SQLite MLflow store; the
real evaluate script then scores both, and once more each seed alone, so the combined record can
be checked against the single-seed ones.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import tiny_params
from tests.test_stage_outputs import run_script, train_tiny_cnn

SEEDS = (42, 7)


def _params(seeds) -> dict:
    return tiny_params(
        **{"train.image_size": 32, "preprocess.size": 32, "train.epochs": 1, "models": ["cnn"], "train_seeds": seeds}
    )


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    return train_tiny_cnn(tmp_path_factory.mktemp("seeds"), _params(list(SEEDS)), SEEDS)


def _evaluate(two_seeds, seeds, out):
    params = out / "params.yaml"
    out.mkdir(parents=True)
    params.write_text(yaml.safe_dump(_params(list(seeds))))
    args = ["cnn", "--params", str(params), "--cache", str(two_seeds["cache"])]
    args += ["--model-dir", str(two_seeds["root"] / "models" / "cnn")]
    for option, path in (("--metrics", "cnn.json"), ("--details", "details.json"), ("--roc", "roc.csv")):
        args += [option, str(out / path)]
    args += ["--curves", str(out / "curves.csv"), "--predictions", str(out / "predictions.csv")]
    result = run_script("evaluate.py", *args, uri=two_seeds["uri"], cwd=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return (
        json.loads((out / "cnn.json").read_text()),
        json.loads((out / "details.json").read_text()),
        pd.read_csv(out / "predictions.csv", dtype={"image_id": str, "patient_id": str}),
    )


def test_the_seeds_train_different_models(two_seeds):
    from cxr14.training.checkpoint import load_checkpoint

    root = two_seeds["root"] / "models" / "cnn"
    weights = [load_checkpoint(root / f"seed-{seed}" / "best.pt")["model"] for seed in SEEDS]
    assert any(not np.array_equal(weights[0][key].numpy(), weights[1][key].numpy()) for key in weights[0])
    configs = [json.loads((root / f"seed-{seed}" / "config.json").read_text()) for seed in SEEDS]
    assert [config["train_seed"] for config in configs] == list(SEEDS)
    assert {config["seed"] for config in configs} == {42}  # the data seed is one for both


def test_evaluate_combines_every_seed_and_logs_each_to_its_run(two_seeds, tmp_path):
    headline, details, predictions = _evaluate(two_seeds, SEEDS, tmp_path / "both")
    alone = [_evaluate(two_seeds, [seed], tmp_path / f"only{seed}")[0]["macro_auroc"] for seed in SEEDS]

    assert details["seeds"]["seeds"] == list(SEEDS) and headline["seeds"] == 2
    assert details["seeds"]["macro_auroc"] == pytest.approx(alone, abs=1e-12)
    assert headline["macro_auroc"] == pytest.approx(np.mean(alone), abs=1e-12)
    assert headline["macro_auroc_seed_sd"] == pytest.approx(np.std(alone, ddof=1), abs=1e-12)
    assert headline["macro_auroc_ci_low"] < headline["macro_auroc"] < headline["macro_auroc_ci_high"]
    # The first seed's tables are the detailed ones; a single seed has no spread.
    assert details["seed"] == 42 and details["metrics"]["macro_auroc"] == pytest.approx(alone[0], abs=1e-12)
    single = json.loads((tmp_path / "only42" / "cnn.json").read_text())
    assert single["seeds"] == 1 and single["macro_auroc_seed_sd"] is None

    # Every seed's scores, in one block per seed, on the same images.
    assert list(predictions["seed"].unique()) == list(SEEDS)
    blocks = [predictions[predictions["seed"] == seed] for seed in SEEDS]
    assert blocks[0]["image_id"].tolist() == blocks[1]["image_id"].tolist()
    assert not np.allclose(blocks[0]["Effusion"].to_numpy(), blocks[1]["Effusion"].to_numpy())

    client = mlflow.tracking.MlflowClient(two_seeds["uri"])
    for seed, value in zip(SEEDS, alone):
        run = client.get_run(two_seeds["runs"][seed])
        assert run.data.tags["seed"] == str(seed) and run.info.run_name == f"cnn seed {seed}"
        assert run.data.metrics["test_macro_auroc"] == pytest.approx(value, abs=1e-9)


def test_evaluate_names_a_seed_that_was_not_trained(two_seeds, tmp_path):
    out = tmp_path / "missing"
    out.mkdir()
    params = out / "params.yaml"
    params.write_text(yaml.safe_dump(_params([42, 3])))
    result = run_script(
        "evaluate.py",
        "cnn",
        "--params",
        str(params),
        "--cache",
        str(two_seeds["cache"]),
        "--model-dir",
        str(two_seeds["root"] / "models" / "cnn"),
        "--metrics",
        str(out / "m.json"),
        "--details",
        str(out / "d.json"),
        "--roc",
        str(out / "r.csv"),
        "--curves",
        str(out / "c.csv"),
        uri=two_seeds["uri"],
        cwd=out,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "seed-3: no trained model of seed 3" in result.stderr and "dvc repro train@cnn-3" in result.stderr
    assert not (out / "m.json").exists()


def test_messages_name_the_training_stage_of_the_seed(tmp_path):
    import torch

    from cxr14.errors import MissingInputError
    from cxr14.inference import load_trained
    from cxr14.model_names import train_stage

    assert train_stage("cnn", tmp_path / "models" / "cnn" / "seed-7") == "train@cnn-7"
    assert train_stage("cnn", tmp_path / "elsewhere") == "train@cnn-<seed>"
    assert train_stage("cnn") == "train@cnn-<seed>"
    with pytest.raises(MissingInputError, match=r"run `dvc repro train@cnn-7`"):
        load_trained(tmp_path / "models" / "cnn" / "seed-7", "cnn", torch.device("cpu"))
