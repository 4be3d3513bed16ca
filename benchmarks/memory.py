"""Benchmark: peak memory (RSS) and wall time of `evaluate@` and `explain@` at NIH scale.

    python benchmarks/memory.py --test-images 25596 --val-images 8607 --patients 8000 --boxes 984
    python benchmarks/memory.py --workdir /tmp/cxr14-memory --keep     # keep (and later reuse) the data

Writes, in a temp folder (or --workdir), a synthetic 224 px cache in the layout of
cxr14.data.cache (`<split>.npy` uint8 [N, 224, 224] + `<split>.csv` + `cache.json`: NIH-like label
prevalences, ages, sexes, views and follow-up numbers, several images per patient), a box table
(data/boxes.csv layout) and an expert-label table (data/expert_labels.csv layout) for test images.
It then trains a tiny `cnn` (64 px, a few steps: `pipeline/train.py`, run in a subprocess with
its MLflow run in a SQLite store in that folder) and runs the real stage scripts
`pipeline/evaluate.py` and `pipeline/explain.py` with the arguments dvc.yaml gives them, each in
its own process, and prints per stage the wall time and the peak resident set size (the kernel's
`ru_maxrss` of the process, the number `/usr/bin/time -v` reports; file-backed pages of the
memory-mapped cache count in it), with the peaks of its anonymous and file-backed parts
(sampled from /proc every 50 ms, Linux only).

The pixels are noise: only the sizes matter here. A second run with the same --workdir reuses
the cache and the trained model (delete the folder to rebuild them); --code runs the stage
scripts of another checkout of the project (e.g. a `git archive` of an older commit unpacked
somewhere) on the same data, to compare memory and outputs (in `<workdir>/out-<label>`) before
and after a change. Wall times depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cxr14.data.attributes import ATTRIBUTE_COLUMNS
from cxr14.labels import EXPERT_FINDINGS, LABELS, NO_FINDING

ROOT = Path(__file__).resolve().parents[1]
SIDE = 224
MODEL_SIZE = 64
# NIH ChestX-ray14 prevalences of the 14 findings (Data_Entry_2017.csv), in LABELS order without No Finding.
PREVALENCE = {
    "Atelectasis": 0.103,
    "Cardiomegaly": 0.025,
    "Effusion": 0.119,
    "Infiltration": 0.177,
    "Mass": 0.052,
    "Nodule": 0.056,
    "Pneumonia": 0.013,
    "Pneumothorax": 0.047,
    "Consolidation": 0.042,
    "Edema": 0.021,
    "Emphysema": 0.022,
    "Fibrosis": 0.015,
    "Pleural_Thickening": 0.030,
    "Hernia": 0.002,
}
BOXED = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax")


def split_index(images: int, patients: int, rng: np.random.Generator) -> pd.DataFrame:
    """One split's index (cxr14.data.cache layout): several images per patient, NIH-like labels."""
    patients = max(1, min(patients, images))
    # Every patient has one image, the rest go to a skewed few (NIH: median 1, some > 100).
    extra = rng.choice(patients, size=images - patients, p=_skewed(patients, rng))
    owner = np.sort(np.concatenate([np.arange(patients), extra]))
    follow_up = np.arange(images) - np.searchsorted(owner, owner)  # 0, 1, ... within each patient
    frame = pd.DataFrame(
        {"image_id": [f"{p:08d}_{f:03d}.png" for p, f in zip(owner, follow_up)], "patient_id": owner.astype(str)}
    )
    findings = np.stack([rng.random(images) < PREVALENCE[name] for name in LABELS if name != NO_FINDING], axis=1)
    columns = iter(findings.T)
    for name in LABELS:
        frame[name] = (~findings.any(axis=1) if name == NO_FINDING else next(columns)).astype(np.uint8)
    attributes = {
        "age": rng.integers(1, 95, size=patients)[owner],
        "sex": np.where(rng.random(patients) < 0.56, "M", "F")[owner],
        "view": np.where(rng.random(images) < 0.6, "PA", "AP"),
        "follow_up": follow_up,
    }
    for name in ATTRIBUTE_COLUMNS:
        frame[name] = attributes[name]
    return frame


def _skewed(count: int, rng: np.random.Generator) -> np.ndarray:
    weights = rng.pareto(1.5, size=count) + 0.05
    return weights / weights.sum()


def write_cache(cache: Path, sizes: dict[str, int], patients: dict[str, int], seed: int) -> None:
    """`<split>.npy` (noise pixels, written in blocks) + `<split>.csv` per split, and cache.json."""
    rng = np.random.default_rng(seed)
    cache.mkdir(parents=True, exist_ok=True)
    offset = 0
    for split, count in sizes.items():
        index = split_index(count, patients[split], rng)
        index["patient_id"] = (index["patient_id"].astype(int) + offset).astype(str)  # disjoint patients
        index["image_id"] = [f"{int(p):08d}_{name[9:]}" for p, name in zip(index["patient_id"], index["image_id"])]
        offset += patients[split]
        array = np.lib.format.open_memmap(cache / f"{split}.npy", mode="w+", dtype=np.uint8, shape=(count, SIDE, SIDE))
        for start in range(0, count, 1024):
            stop = min(count, start + 1024)
            array[start:stop] = rng.integers(0, 256, size=(stop - start, SIDE, SIDE), dtype=np.uint8)
        array.flush()
        del array
        index.to_csv(cache / f"{split}.csv", index=False)
    summary = {"size": SIDE, "splits": sizes, "converted_to_8bit_gray": 0, "unknown_attributes": {}}
    (cache / "cache.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def write_tables(cache: Path, boxes_csv: Path, expert_csv: Path, boxes: int, expert_images: int, seed: int) -> None:
    """Boxes on test images positive for a boxed finding, and expert labels of some test images."""
    rng = np.random.default_rng([seed, 1])
    index = pd.read_csv(cache / "test.csv", dtype={"image_id": str, "patient_id": str})
    rows = []
    for number in range(boxes):
        finding = BOXED[number % len(BOXED)]
        candidates = np.flatnonzero(index[finding].to_numpy())
        row = int(rng.choice(candidates))
        w, h = rng.uniform(10, 90, size=2).round(2)
        x, y = rng.uniform(0, SIDE - w), rng.uniform(0, SIDE - h)
        rows.append((row, index["image_id"][row], finding, round(x, 2), round(y, 2), w, h))
    frame = pd.DataFrame(rows, columns=["row", "image_id", "finding", "x", "y", "w", "h"])
    frame.sort_values(["row", "finding"], kind="stable").to_csv(boxes_csv, index=False)
    chosen = np.sort(rng.choice(len(index), size=min(expert_images, len(index)), replace=False))
    expert = index.loc[chosen, ["image_id", "patient_id"]].reset_index(drop=True)
    for finding in EXPERT_FINDINGS:
        expert[finding] = (rng.random(len(expert)) < 0.1).astype(np.uint8)
    expert.to_csv(expert_csv, index=False)


def write_params(workdir: Path) -> Path:
    """The project's params.yaml with a tiny cnn (64 px, one short epoch on the CPU) and one seed."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["models"], params["train_seeds"] = ["cnn"], [42]
    params["preprocess"]["size"] = SIDE
    params["train"].update(
        epochs=1, batch_size=16, image_size=MODEL_SIZE, max_steps_per_epoch=4, device="cpu", overrides={}
    )
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


class PeakSampler(threading.Thread):
    """Peak RssAnon and RssFile of a process, from /proc/<pid>/status every 50 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/proc/{pid}/status")
        self.peaks = {"RssAnon": 0, "RssFile": 0}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                lines = self.status.read_text().splitlines()
            except OSError:
                return
            for line in lines:
                key, _, value = line.partition(":")
                if key in self.peaks and value.strip():
                    self.peaks[key] = max(self.peaks[key], int(value.split()[0]) * 1024)


def run_measured(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> dict:
    """Run `command`; wall seconds, peak RSS (ru_maxrss) and sampled anonymous/file peaks in bytes."""
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as output:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT)
        sampler = PeakSampler(process.pid)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        sampler.done.set()
        sampler.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed (exit {process.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return {
        "seconds": seconds,
        "peak_rss": usage.ru_maxrss * 1024,
        "peak_anon": sampler.peaks["RssAnon"],
        "peak_file": sampler.peaks["RssFile"],
    }


def stage_commands(code: Path, workdir: Path, out: Path) -> dict[str, list[str]]:
    """The evaluate and explain commands of dvc.yaml, on the synthetic data, writing under `out`."""
    common = ["cnn", "--params", str(workdir / "params.yaml"), "--cache", str(workdir / "cache")]
    evaluate = [sys.executable, str(code / "pipeline" / "evaluate.py"), *common]
    evaluate += ["--model-dir", str(workdir / "models" / "cnn"), "--metrics", str(out / "cnn.json")]
    for option, path in (
        ("--details", "details/cnn.json"),
        ("--roc", "roc/cnn.csv"),
        ("--curves", "curves/cnn.csv"),
        ("--predictions", "predictions/cnn.csv"),
        ("--figures", "figures/cnn"),
        ("--subgroups", "subgroups/cnn.json"),
    ):
        evaluate += [option, str(out / path)]
    evaluate += ["--expert-labels", str(workdir / "expert_labels.csv")]
    explain = [sys.executable, str(code / "pipeline" / "explain.py"), *common]
    explain += ["--model-dir", str(workdir / "models" / "cnn" / "seed-42"), "--boxes", str(workdir / "boxes.csv")]
    explain += ["--summary", str(out / "explain" / "cnn.json"), "--figures", str(out / "explain" / "cnn")]
    return {"evaluate": evaluate, "explain": explain}


def child_env(workdir: Path, code: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'store' / 'mlflow.db'}", CXR14_NO_PROGRESS="1")
    env["CXR14_WARM"] = "0"  # the stage in its own process, whose peak RSS is measured (cxr14.warm)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(code / "src"), env.get("PYTHONPATH")]))
    return env


def prepare(args: argparse.Namespace, workdir: Path) -> None:
    """The cache, tables, params and trained model, unless a previous run left them in `workdir`."""
    cache = workdir / "cache"
    if not (cache / "cache.json").is_file():
        sizes = {"train": args.train_images, "val": args.val_images, "test": args.test_images}
        shares = {split: count / sum(sizes.values()) for split, count in sizes.items()}
        patients = {split: max(1, round(args.patients / shares["test"] * share)) for split, share in shares.items()}
        patients["test"] = args.patients
        started = time.perf_counter()
        write_cache(cache, sizes, patients, args.seed)
        write_tables(cache, workdir / "boxes.csv", workdir / "expert_labels.csv", args.boxes, args.expert, args.seed)
        print(f"synthetic cache {sizes} written in {time.perf_counter() - started:.0f} s", flush=True)
    params = write_params(workdir)
    model = workdir / "models" / "cnn" / "seed-42"
    if not (model / "mlflow_run.json").is_file():
        (workdir / "store").mkdir(exist_ok=True)
        command = [sys.executable, str(ROOT / "pipeline" / "train.py"), "cnn", "--seed", "42", "--params", str(params)]
        command += ["--cache", str(cache), "--out", str(model)]
        trained = run_measured(command, child_env(workdir, ROOT), workdir, workdir / "train.log")
        print(f"tiny cnn trained in {trained['seconds']:.0f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test-images", type=int, default=25596, help="test split size (NIH: %(default)s)")
    parser.add_argument("--val-images", type=int, default=8607, help="validation split size (default: %(default)s)")
    parser.add_argument("--train-images", type=int, default=256, help="train split size (default: %(default)s)")
    parser.add_argument("--patients", type=int, default=8000, help="test patients (default: %(default)s)")
    parser.add_argument("--boxes", type=int, default=984, help="boxes on test images (NIH: %(default)s)")
    parser.add_argument("--expert", type=int, default=800, help="test images with expert labels (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data (default: %(default)s)")
    parser.add_argument("--stages", nargs="+", default=["evaluate", "explain"], choices=["evaluate", "explain"])
    parser.add_argument("--workdir", type=Path, default=None, help="keep data and outputs here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (printed)")
    parser.add_argument("--code", type=Path, default=ROOT, help="project checkout whose stage scripts run")
    parser.add_argument("--label", default="current", help="name of this run's output folder out-<label>")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cxr14-memory-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        prepare(args, workdir)
        out = workdir / f"out-{args.label}"
        shutil.rmtree(out, ignore_errors=True)
        commands = stage_commands(args.code.resolve(), workdir, out)
        env = child_env(workdir, args.code.resolve())
        results = {}
        for stage in args.stages:
            results[stage] = run_measured(commands[stage], env, workdir, workdir / f"{stage}-{args.label}.log")
            print(_line(stage, results[stage]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"data and outputs kept in {workdir}")


def _line(stage: str, result: dict) -> str:
    gb = 1024**3
    return (
        f"{stage:<9} wall {result['seconds']:7.1f} s   peak RSS {result['peak_rss'] / gb:5.2f} GB "
        f"(sampled peaks: anonymous {result['peak_anon'] / gb:5.2f} GB, file-backed {result['peak_file'] / gb:5.2f} GB)"
    )


if __name__ == "__main__":
    main()
