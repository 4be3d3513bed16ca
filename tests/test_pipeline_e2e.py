"""The real `dvc repro` of the whole DAG, on a tiny configuration, in a temporary git repo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from benchmarks import scale
from cxr14.data.nih_download import _md5_of_file  # the download's own chunked file md5
from tests.browser import page_problems, render_page, require_chromium
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow
MODELS = ["cnn", "vit_v1", "resnet18"]


def run(args: list[str], cwd: Path, env: dict) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def make_repo(work: Path, params: dict) -> dict:
    """A git + DVC repo at `work` holding the project's code, dvc.yaml, .dvc/config and `params`
    (benchmarks/scale.py builds its repositories the same way); returns its env."""
    return scale.make_repo(work, params)


def dvc_cache_damage(work: Path) -> list[str]:
    """Objects in `work`'s .dvc/cache whose bytes no longer hash to their name (an output written in place)."""
    damaged = []
    for path in sorted((work / ".dvc" / "cache" / "files" / "md5").glob("*/*")):
        if _md5_of_file(path).hexdigest() != path.parent.name + path.name.removesuffix(".dir"):
            damaged.append(str(path.relative_to(work)))
    return damaged


def cache_object(work: Path, output: str, name: str) -> Path:
    """The .dvc/cache object of file `name` in the directory output `output`, as dvc.lock records it."""
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    outs = [out for stage in lock["stages"].values() for out in stage.get("outs", []) if out["path"] == output]
    directory = outs[0]["md5"]  # "<md5>.dir"
    listing = json.loads((work / ".dvc" / "cache" / "files" / "md5" / directory[:2] / directory[2:]).read_text())
    md5 = next(entry["md5"] for entry in listing if entry["relpath"] == name)
    return work / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """A copy of the project (code + dvc.yaml + shrunk params.yaml) after one `dvc repro`."""
    work = tmp_path_factory.mktemp("e2e") / "repo"
    # Groups of a few patients are scored here (the tiny test split has ~8 patients).
    env = make_repo(work, tiny_params(models=MODELS, **{"evaluate.subgroup_min_patients": 2}))
    # The heavy stages run warm (cxr14.warm), as for users; this repo's servers log to their own folder.
    (work.parent / "run").mkdir(mode=0o700)
    env["XDG_RUNTIME_DIR"] = str(work.parent / "run")
    output = run(["dvc", "repro"], work, env)
    return work, env, output


def test_nih_source_records_a_local_folder_and_runs_end_to_end(tmp_path):
    """`data.source: nih` on a folder in the official NIH layout: recorded in a manifest, not copied
    (data/raw is a cached output of a few KB), then the DAG."""
    from cxr14.data.phantom import generate_phantom

    nih_folder = tmp_path / "nih"
    generate_phantom(nih_folder, n_patients=30, image_size=96, seed=3, progress=False)
    # Phantom ids collide with real test patients, so the official list cannot apply here.
    params = tiny_params(
        models=["cnn"], **{"data.source": "nih", "data.nih.path": str(nih_folder), "split.method": "patient"}
    )
    work = tmp_path / "repo"
    env = make_repo(work, params)
    run(["dvc", "repro"], work, env)
    raw = work / "data" / "raw"
    assert sorted(path.name for path in raw.iterdir()) == ["BBox_List_2017.csv", "Data_Entry_2017.csv", "images.csv"]
    manifest = (raw / "images.csv").read_text().splitlines()
    assert manifest[0] == "Image Index,path,bytes,mtime_ns"
    assert len(manifest) == 1 + len(list(nih_folder.glob("images/*.png")))
    cached_files = [p for p in (work / ".dvc" / "cache").rglob("*") if p.is_file()]
    cached = {p.read_bytes() for p in cached_files}
    assert (raw / "images.csv").read_bytes() in cached  # data/raw is cached (a queued experiment restores it) ...
    png_magic = b"\x89PNG\r\n\x1a\n"
    assert not [p for p in cached_files if p.read_bytes()[:8] == png_magic]  # ... but no image was copied
    report = (work / "metrics" / "report.md").read_text()
    assert "`cnn`" in report
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], work, env)
    # An experiment in a fresh copy of the repo (what `dvc exp run --queue` runs) restores data/raw
    # from the cache instead of re-running fetch (issue 11).
    run(["git", "add", "dvc.lock", "metrics"], work, env)
    run(["git", "commit", "-qm", "repro"], work, env)
    output = run(["dvc", "exp", "run", "--temp", "-S", "split.val_fraction=0.25", "split"], work, env)
    assert "Stage 'fetch' didn't change, skipping" in output and "Running stage 'split'" in output
    # The download's BBox_List_2017.csv (NIH format, written by the phantom) was copied and scored.
    assert (work / "data" / "raw" / "BBox_List_2017.csv").is_file()
    assert "| model | Grad-CAM layer | boxes |" in report

    # Without a box file: same images and cache, so no re-training; no localisation score.
    (nih_folder / "BBox_List_2017.csv").unlink()
    run(["dvc", "repro", "--single-item", "--force", "fetch"], work, env)
    output = run(["dvc", "repro"], work, env)
    assert "Running stage 'boxes'" in output and "Running stage 'train@cnn-42'" not in output
    assert not (work / "data" / "raw" / "BBox_List_2017.csv").exists()
    summary = json.loads((work / "metrics" / "explain" / "cnn.json").read_text())
    assert summary["localisation"] is None and summary["retrieval"]["queries"] > 0
    assert "No bounding boxes for the test split" in (work / "metrics" / "report.md").read_text()

    # An image edited after fetch: the stage that opens it stops, naming the file and the fix.
    name = (work / "data" / "raw" / "images.csv").read_text().splitlines()[1].split(",")[0]
    edited = nih_folder / "images" / name
    edited.write_bytes(edited.read_bytes() + b"\0")
    result = subprocess.run(
        ["dvc", "repro", "--force", "--single-item", "preprocess"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode != 0
    assert f"{edited.resolve()}: image {name} changed since fetch" in result.stderr + result.stdout
    assert "dvc repro -f fetch" in result.stderr + result.stdout

    # Every re-run above wrote new files, so no object DVC linked from .dvc/cache changed. The check
    # sees a write in place: through the workspace's hard link it lands in the cache object itself.
    assert dvc_cache_damage(work) == []
    run(["dvc", "checkout", "preprocess"], work, env)  # the failed run removed data/cache
    array = work / "data" / "cache" / "test.npy"
    stored = cache_object(work, "data/cache", "test.npy")
    assert array.stat().st_ino == stored.stat().st_ino
    array.chmod(0o644)  # DVC made it read-only; root, or a user who lifts that, can still write
    with open(array, "r+b") as stream:
        stream.seek(-1, os.SEEK_END)
        last = stream.read(1)
        stream.seek(-1, os.SEEK_END)
        stream.write(bytes([last[0] ^ 0xFF]))
    assert dvc_cache_damage(work) == [str(stored.relative_to(work))]


def test_repro_builds_report_for_every_model(repo):
    work, _, _ = repo
    report = (work / "metrics" / "report.md").read_text()
    for model in MODELS:
        assert f"`{model}`" in report
        metrics = json.loads((work / "metrics" / f"{model}.json").read_text())
        assert 0.0 <= metrics["macro_auroc"] <= 1.0
        assert metrics["macro_auroc_ci_low"] <= metrics["macro_auroc"] <= metrics["macro_auroc_ci_high"]
    summary = json.loads((work / "metrics" / "summary.json").read_text())
    assert sorted(summary["ranking"]) == sorted(MODELS)
    assert len(summary["comparisons"]) == len(MODELS) - 1
    assert "## Are the differences real?" in report and "## Operating points and calibration" in report
    assert "CheXNet" not in report  # the published reference is shown for NIH data only
    assert report.splitlines()[2].startswith("**Synthetic data.**")  # said first, under the title
    assert "Radiologist-adjudicated" not in report  # the phantom's truth is not called radiologists
    split = json.loads((work / "metrics" / "split.json").read_text())
    assert split["train"]["images"] > split["val"]["images"] > 0


def test_repro_profiles_every_model_into_report_and_workbook(repo):
    import pandas as pd

    work, _, _ = repo
    report = (work / "metrics" / "report.md").read_text()
    assert "## Efficiency" in report
    sheets = pd.read_excel(work / "metrics" / "structure.xlsx", sheet_name=None)
    for model in MODELS:
        figures = json.loads((work / "metrics" / "efficiency" / f"{model}.json").read_text())
        assert figures["params_total"] == figures["params_trainable"] > 0
        assert figures["flops_per_image"] > 0 and figures["latency_ms"] > 0 and figures["throughput_img_s"] > 0
        assert figures["input_size"] == "3x64x64"
        table = pd.read_csv(work / "metrics" / "structure" / f"{model}.csv")
        assert table["parameters"].sum() == figures["params_total"]
        assert len(sheets[model]) == len(table)
        assert f"| `{model}` | 3x64x64 | {figures['params_total']:,} |" in report


def _table_row(report: str, model: str, heading: str) -> list[str]:
    """Cells of `model`'s row in the first table after `heading`."""
    section = report.split(heading, 1)[1]
    for line in section.splitlines():
        if line.startswith("|") and f"`{model}`" in line:
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row for {model} after {heading}")


def test_report_numbers_trace_to_files_under_metrics(repo):
    work, _, _ = repo
    report = (work / "metrics" / "report.md").read_text()
    for model in MODELS:
        details = json.loads((work / "metrics" / "details" / f"{model}.json").read_text())["metrics"]
        row = _table_row(report, model, "| rank | model |")
        low, high = details["intervals"]["macro_auroc"]
        assert row[3] == f"{details['macro_auroc']:.3f} [{low:.3f}, {high:.3f}]"
        efficiency = json.loads((work / "metrics" / "efficiency" / f"{model}.json").read_text())
        assert row[7:11] == [
            f"{efficiency['flops_per_image'] / 1e9:.3f}",
            f"{efficiency['latency_ms']:.2f}",
            f"{efficiency['size_mb']:.1f}",
            f"{efficiency['throughput_img_s']:.0f}",
        ]
        explained = json.loads((work / "metrics" / "explain" / f"{model}.json").read_text())
        row = _table_row(report, model, "## Embeddings: retrieval")
        retrieval = explained["retrieval"]
        assert row[3:6] == [
            f"{retrieval[key]:.3f}" for key in ("precision_at_1", "recall_at_5", "mean_average_precision")
        ]
        row = _table_row(report, model, "## Explainability: Grad-CAM localisation")
        overall = explained["localisation"]["overall"]
        assert row[2:5] == [str(overall["boxes"]), f"{overall['pointing_game']:.3f}", f"{overall['mean_iou']:.3f}"]
        assert row[6] == str(overall["empty_maps"])


def test_explain_scores_every_model_against_the_phantom_boxes(repo):
    work, _, _ = repo
    import pandas as pd

    boxes = pd.read_csv(work / "data" / "boxes.csv")
    test_ids = set(pd.read_csv(work / "data" / "cache" / "test.csv", dtype=str)["image_id"])
    assert len(boxes) > 0 and set(boxes["image_id"]) <= test_ids
    for model in MODELS:
        summary = json.loads((work / "metrics" / "explain" / f"{model}.json").read_text())
        assert summary["localisation"]["overall"]["boxes"] == len(boxes)
        assert 0 <= summary["retrieval"]["precision_at_1"] <= 1 and summary["retrieval"]["queries"] > 0
        assert summary["tsne_points"] == len(test_ids)


def test_repro_log_has_each_stages_summary_and_no_library_chatter(repo):
    work, _, output = repo
    for model in MODELS:
        train = json.loads((work / "models" / model / "seed-42" / "train.json").read_text())
        assert f"{model}: {train['epochs_run']} epochs in " in output
        best = f"best epoch {train['best_epoch']} (validation macro AUROC {train['best_val_macro_auroc']:.4f})"
        assert best in output
        scored = json.loads((work / "metrics" / "details" / f"{model}.json").read_text())["metrics"]
        low, high = scored["intervals"]["macro_auroc"]
        assert f"{model}: test macro AUROC {scored['macro_auroc']:.4f} [{low:.4f}, {high:.4f}]" in output
        explained = json.loads((work / "metrics" / "explain" / f"{model}.json").read_text())
        assert f"{model}: pointing game {explained['localisation']['overall']['pointing_game']:.3f}" in output
        assert f"{model}: retrieval P@1 {explained['retrieval']['precision_at_1']:.3f}" in output
        assert f"{model}: exported to exports/{model}, card metrics/cards/{model}.md, registered as" in output
    ranking = json.loads((work / "metrics" / "summary.json").read_text())["ranking"]
    report_line = "report: metrics/report.md and metrics/report.html; models by test macro AUROC: "
    assert report_line + ", ".join(ranking) in output
    assert ".partial" not in output  # staging folders are not what the user gets
    for chatter in ("INFO mlflow", "INFO onnx_ir", "INFO onnxscript", "Downloading artifacts", "not registered"):
        assert chatter not in output, chatter


def test_every_figure_is_logged_to_the_models_run(repo):
    work, env, _ = repo
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("cxr14").experiment_id])
    for r in runs:
        logged = {Path(item.path).name for item in client.list_artifacts(r.info.run_id, "figures")}
        assert logged == {"roc_pr.png", "reliability.png", "training.png", "gradcam.png", "tsne.png"}
        report = {Path(item.path).name for item in client.list_artifacts(r.info.run_id, "report")}
        assert report == {"report.md", "report.html", "auroc_heatmap.png", "roc_pr_all.png", "training_all.png"}
        assert "retrieval_mean_average_precision" in r.data.metrics
        assert "localisation_pointing_game" in r.data.metrics


def test_report_html_renders_in_headless_chromium(repo, tmp_path):
    require_chromium()
    work, _, _ = repo
    facts = render_page(work / "metrics" / "report.html", screenshot=tmp_path / "report.png")
    assert page_problems(facts) == []
    main = facts["tables"][0]
    assert "macro AUROC (95 % CI)" in main["header"] and main["body_rows"] == len(MODELS)
    assert main["width"] > 300 and main["height"] > 50
    # The reviewer's sections, laid out with their tables (issue 14).
    for heading in ("Training seeds", "Calibration", "Against reference labels (the phantom's truth)", "Subgroups"):
        assert heading in facts["headings"], facts["headings"]
    expert = [table for table in facts["tables"] if "AUROC vs reference" in table["header"]]
    assert expert and expert[0]["body_rows"] >= 4 * len(MODELS) and expert[0]["height"] > 50  # + a mean row each
    groups = [table for table in facts["tables"] if table["header"][:1] == ["group"]]
    assert len(groups) == 2 and all(table["body_rows"] >= 9 for table in groups)  # sex 2 + age 5 + view 2 + ...
    # Heat-map, all-model ROC/PR, all-model training curves, then five figures per model.
    assert len(facts["images"]) == 3 + 5 * len(MODELS)
    for image in facts["images"]:
        assert image["src"].startswith("data:image/png")
        assert image["naturalWidth"] > 200 and image["width"] > 100, image


def test_radiologists_subgroups_and_calibration_reach_the_files_and_mlflow(repo):
    """The phantom's noisy labels against its noiseless expert file; subgroup tables; calibration;
    all of it in each model's MLflow run (issue 14)."""
    work, env, _ = repo
    import pandas as pd

    expert = pd.read_csv(work / "data" / "expert_labels.csv", dtype=str)
    test_ids = set(pd.read_csv(work / "data" / "cache" / "test.csv", dtype=str)["image_id"])
    assert len(expert) == len(test_ids) and set(expert["image_id"]) == test_ids  # the phantom labels every image
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = {r.data.tags["model"]: r for r in client.search_runs([client.get_experiment_by_name("cxr14").experiment_id])}
    for model in MODELS:
        details = json.loads((work / "metrics" / "details" / f"{model}.json").read_text())
        findings = details["metrics"]["expert"]["findings"]
        assert findings["Fracture"]["nih_class"] is None and findings["Fracture"]["auroc_expert"] is None
        assert {"Pneumothorax", "Nodule or mass", "Airspace opacity"} <= set(findings)
        subgroups = json.loads((work / "metrics" / "subgroups" / f"{model}.json").read_text())
        assert set(subgroups["dimensions"]) == {"sex", "age", "view", "follow_up"}
        assert subgroups["dimensions"]["sex"]["unknown_images"] == 0
        scaling = details["metrics"]["temperature_scaling"]
        assert scaling["after"]["macro_val_nll"] <= scaling["before"]["macro_val_nll"]
        predictions = pd.read_csv(work / "metrics" / "predictions" / f"{model}.csv")
        assert {"seed", "calibrated_Effusion", "true_Effusion"} <= set(predictions.columns)
        metrics = runs[model].data.metrics
        assert "test_expert_auroc_Pneumothorax" in metrics and "test_nih_auroc_Pneumothorax" in metrics
        assert "test_macro_ece_after_scaling" in metrics and "test_subgroup_macro_auroc_sex_M" in metrics
        assert runs[model].data.tags["seed"] == "42"
        logged = {Path(item.path).name for item in client.list_artifacts(runs[model].info.run_id, "evaluation")}
        assert logged == {f"{model}.json"}


def test_cxr14_predict_on_the_phantom_images_gives_evaluates_test_scores(repo, tmp_path):
    """The README's command on the repro's own images: every test image scores as evaluate@ scored
    it from the cache (same pixels, same function), and the calls use best.pt's thresholds, which
    are the thresholds evaluate@ chose."""
    import numpy as np
    import pandas as pd

    from cxr14.labels import LABELS

    work, env, _ = repo
    for model in MODELS:
        out = tmp_path / f"{model}.csv"
        command = ["predict", "--model", f"models/{model}", "data/raw/images", "--out", str(out)]
        result = subprocess.run(
            [sys.executable, "-m", "cxr14", *command], cwd=work, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        table = pd.read_csv(out)
        table.index = table["image"].map(lambda path: Path(path).name)
        assert len(table) == len(list((work / "data" / "raw" / "images").glob("*.png")))
        evaluated = pd.read_csv(work / "metrics" / "predictions" / f"{model}.csv").set_index("image_id")
        # The predictions file keeps 5 decimals (pipeline/evaluate.py): equal up to that rounding.
        np.testing.assert_allclose(
            table.loc[evaluated.index, list(LABELS)].to_numpy(), evaluated[list(LABELS)].to_numpy(), rtol=0, atol=5.1e-6
        )
        details = json.loads((work / "metrics" / "details" / f"{model}.json").read_text())
        used = json.loads(out.with_suffix(".thresholds.json").read_text())
        assert used["thresholds"] == details["metrics"]["thresholds"] and used["seed"] == 42


def test_export_registers_every_model_with_a_card(repo):
    work, env, _ = repo
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    report = (work / "metrics" / "report.md").read_text()
    for model in MODELS:
        registry = json.loads((work / "exports" / model / "registry.json").read_text())
        version = client.get_model_version(f"cxr14-{model}", str(registry["version"]))
        headline = json.loads((work / "metrics" / f"{model}.json").read_text())
        assert f"test macro AUROC {headline['macro_auroc']:.3f}" in version.description
        assert (
            version.run_id
            == json.loads((work / "models" / model / "seed-42" / "mlflow_run.json").read_text())["run_id"]
        )
        parity = json.loads((work / "exports" / model / "network" / "export.json").read_text())["parity"]
        assert parity is not None and parity["images"] > 0
        card = (work / "metrics" / "cards" / f"{model}.md").read_text()
        assert "not a medical device" in card.lower() and f"cards/{model}.md" in report
        logged = {Path(item.path).name for item in client.list_artifacts(version.run_id, "card")}
        assert logged == {f"{model}.md"}


def test_patients_never_cross_splits(repo):
    work, _, _ = repo
    import pandas as pd

    splits = pd.read_csv(work / "data" / "splits.csv", dtype=str)
    assert splits.groupby("Patient ID")["split"].nunique().max() == 1


def test_one_mlflow_run_per_model_with_epoch_auroc(repo):
    work, env, _ = repo
    client = mlflow.tracking.MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("cxr14").experiment_id])
    assert sorted(r.data.tags["model"] for r in runs) == sorted(MODELS)
    for r in runs:
        assert len(client.get_metric_history(r.info.run_id, "val_macro_auroc")) == 2
        assert "test_macro_f1" in r.data.metrics
        assert r.data.metrics["efficiency_latency_ms"] > 0
        assert r.data.tags["weights"] == "random init"


def test_second_repro_is_up_to_date_and_dvc_views_work(repo):
    work, env, _ = repo
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], work, env)
    shown = run(["dvc", "metrics", "show"], work, env)
    assert "macro_auroc" in shown and "metrics/cnn.json" in shown
    run(["dvc", "plots", "show", "-o", "plots_out"], work, env)
    assert (work / "plots_out" / "index.html").is_file()
    # Every model's ROC and training curves reach a chart, every row of the file (an empty chart
    # is what DVC draws for a plot it could not read, with only a warning on stderr).
    shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=work, env=env, capture_output=True, text=True)
    plots = json.loads(shown.stdout)
    assert not plots.get("errors"), f"dvc plots show could not read: {plots['errors']}"
    for model in MODELS:
        for folder in ("roc", "curves"):
            path = f"metrics/{folder}/{model}.csv"
            rows = len((work / path).read_text().splitlines()) - 1
            charts = plots["data"].get(path, [])
            assert len(charts) == 1, f"{path}: {len(charts)} charts in dvc plots show"
            assert len(charts[0]["content"]["data"]["values"]) == rows, path
    # Only this pipeline's models: a file another `models` list left behind is not drawn.
    (work / "metrics" / "roc" / "resnet34.csv").write_text("fpr,tpr\n0,0\n1,1\n")
    try:
        shown = subprocess.run(["dvc", "plots", "show", "--json"], cwd=work, env=env, capture_output=True, text=True)
        assert "metrics/roc/resnet34.csv" not in json.loads(shown.stdout)["data"]
    finally:
        (work / "metrics" / "roc" / "resnet34.csv").unlink()


def test_stages_ran_warm_and_run_alike_in_their_own_process(repo):
    """The repro's heavy stages were forks of a warm server (its log names them); evaluate@ re-run by
    DVC with warm start off writes byte-identical outputs (the lock's hashes do not move)."""
    work, env, _ = repo
    logs = list((work.parent / "run" / f"cxr14-warm-{os.getuid()}").glob("*.log"))
    served = "".join(log.read_text() for log in logs)
    for script in ("train.py", "evaluate.py", "explain.py", "profile_model.py", "export.py", "report.py"):
        assert f"pipeline/{script}" in served, script
    assert "pipeline/split.py" not in served  # the light stages keep their own short process

    def outputs() -> list:
        return yaml.safe_load((work / "dvc.lock").read_text())["stages"]["evaluate@cnn"]["outs"]

    warm_outputs = outputs()
    run(["dvc", "repro", "--force", "--single-item", "evaluate@cnn"], work, {**env, "CXR14_WARM": "0"})
    assert outputs() == warm_outputs


def test_exp_run_changes_only_training_and_is_listed(repo):
    """A training setting re-trains (one model, to keep the suite short: the stages of every model
    are the same template) and everything after it, nothing before; `dvc exp show` lists it."""
    work, env, _ = repo
    run(["git", "add", "-A"], work, env)
    run(["git", "commit", "-qm", "baseline results"], work, env)
    output = run(["dvc", "exp", "run", "-S", "train.epochs=1", "-S", "models=[cnn]"], work, env)
    for stage in ("train@cnn-42", "evaluate@cnn", "explain@cnn", "profile@cnn", "export@cnn", "report"):
        assert f"Running stage '{stage}'" in output
    assert "Running stage 'fetch'" not in output and "Running stage 'preprocess'" not in output
    table = json.loads(run(["dvc", "exp", "show", "--json"], work, env))
    one_epoch = [
        entry
        for entry in _entries_with_results(table)
        if entry["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    ]
    assert one_epoch, "dvc exp show does not list the train.epochs=1 experiment"
    metrics = one_epoch[0]["metrics"]
    assert 0.0 <= metrics["metrics/cnn.json"]["data"]["macro_auroc"] <= 1.0
    assert metrics["metrics/cnn.json"]["data"]["best_epoch"] in (0, 1)  # one epoch trained (0: none selectable)


def test_adding_a_training_seed_trains_only_the_new_seed(repo):
    work, env, _ = repo
    output = run(["dvc", "exp", "run", "-S", "train_seeds=[42,7]", "-S", "models=[cnn]"], work, env)
    assert "Running stage 'train@cnn-7'" in output
    assert "Running stage 'train@cnn-42'" not in output and "Running stage 'preprocess'" not in output
    assert "Running stage 'evaluate@cnn'" in output
    table = json.loads(run(["dvc", "exp", "show", "--json"], work, env))
    two = [
        entry
        for entry in _entries_with_results(table)
        if entry["params"]["params.yaml"]["data"]["train_seeds"] == [42, 7]
    ]
    assert two, "dvc exp show does not list the two-seed experiment"
    headline = two[0]["metrics"]["metrics/cnn.json"]["data"]
    assert headline["seeds"] == 2 and headline["macro_auroc_seed_sd"] is not None


def _entries_with_results(node):
    """Every {'params': …, 'metrics': …} record in `dvc exp show --json`, whatever its nesting."""
    if isinstance(node, dict):
        if isinstance(node.get("params"), dict) and isinstance(node.get("metrics"), dict) and node["metrics"]:
            yield node
        for value in node.values():
            yield from _entries_with_results(value)
    elif isinstance(node, list):
        for value in node:
            yield from _entries_with_results(value)


def test_outputs_are_linked_not_copied_into_an_intact_dvc_cache(repo):
    """.dvc/config puts hard links first, so DVC moves an output into .dvc/cache by a link instead of
    a copy (the NIH image cache is on disk once) and the runs above (repro, `dvc exp run` of training,
    a new seed into a persisted folder) changed no cached object. Last in this module on purpose:
    it re-builds the cache at another size. (On XFS or btrfs DVC would reflink: a new inode.)"""
    work, env, _ = repo
    assert dvc_cache_damage(work) == []
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["preprocess"]["size"] += 8  # new bytes, so the commit below has to store a new object
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["dvc", "repro", "--no-commit", "--single-item", "preprocess"], work, env)
    written = {name: (work / "data" / "cache" / name).stat().st_ino for name in ("train.npy", "test.npy")}
    run(["dvc", "commit", "--force", "preprocess"], work, env)
    for name, inode in written.items():
        assert cache_object(work, "data/cache", name).stat().st_ino == inode, f"{name} was copied into .dvc/cache"
    assert dvc_cache_damage(work) == []
