"""Benchmark: the pipeline at NIH scale, stage by stage -- wall time, time in DVC, peak RSS, disk.

    python benchmarks/scale.py --images 112120 --distinct 3000 --work /scratch/scale --json scale.json
    python benchmarks/scale.py --images 60 --distinct 6 --image-size 64 --set preprocess.size=64 \\
        --set train.image_size=64 --work /tmp/scale-tiny       # a smoke run (what the test does)

Three steps, all under `--work` (deleted at the end unless --keep):

1. `nih/`: a folder in the official NIH layout (`images/*.png` + `Data_Entry_2017.csv` +
   `BBox_List_2017.csv`) that `data.source: nih` reads. `--distinct` phantom radiographs
   (cxr14.data.phantom, 8-bit PNG, `--image-size` px, rendered on every core into `pool/`) are
   hard-linked (symlinked if the file system refuses hard links) under `--images` NIH file names.
   The names are real: the official test list shipped with the package provides the test
   patients' images (all of them at 112,120 images, whole patients in proportion below), so
   `split.method: auto` applies the official split; the other patients get ids from 1..30,805
   not in that list, ~30,805 patients in all. Findings follow NIH's frequencies
   (cxr14.data.phantom_labels), age/sex/view are plausible, and ~984 boxes (scaled with the test
   share) lie on ~880 test images whose labels include the boxed finding.
2. `repo/`: a git + DVC copy of the project's code, dvc.yaml and params.yaml, with
   `data.source: nih`, `data.nih.path` = that folder, `models: [--models]`, one epoch of
   `--train-steps` steps on the CPU (`--set key=value` changes any other params key).
3. Each stage in DAG order with `dvc repro --single-item <stage>` (fetch, split, preprocess,
   boxes, expert_labels, train@<model>-<seed>, evaluate@, profile@, explain@, export@, report),
   then a no-op `dvc repro` (`--until STAGE` stops after STAGE; the no-op is then `dvc repro STAGE`).
   `--from-commit HEAD` benchmarks a commit's code instead of the working tree's.

How time and memory are measured, from outside (neither DVC nor the stage is changed): the
`dvc` process is started here and its process tree is polled every `--poll` seconds (psutil).
The stage's command is the descendant whose command line names its `pipeline/<script>.py`: its
creation time (from the kernel) to the first poll that no longer finds it is "script"; the
rest of the wall time is DVC's own work, split into "DVC before" (start-up, loading dvc.yaml,
checking the stage's dependencies against dvc.lock) and "DVC after" (hashing the outputs,
copying them into .dvc/cache, writing dvc.lock). `--single-item` keeps DVC from re-checking the
upstream stages in every call, so the per-stage DVC times add up to what one `dvc repro` pays.
Peak RSS is reported twice: the largest single process of the tree (the kernel's ru_maxrss
from wait4, exact), and the largest sum over the tree seen by the polls (counts the worker
processes of `preprocess` together). Disk is the allocated size (hard links counted once) of
data/, .dvc/cache, models/, metrics/ and exports/ after each stage.

Output: a Markdown table on stdout and, with --json, every number in a JSON file (written
also when a stage fails: the stages before it, and the failure; the exit status is then 1).
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
NIH_IMAGES, NIH_PATIENTS, NIH_TEST_IMAGES = 112_120, 30_805, 25_596
NIH_BOXES, NIH_BOXED_IMAGES = 984, 880
DISK_AREAS = ("data", ".dvc/cache", "models", "metrics", "exports")
GB = 1e9
BoxRow = tuple[str, str, float, float, float, float]  # image, NIH finding, x, y, w, h (px)


class BenchmarkError(RuntimeError):
    """A step of the benchmark failed; the message names the step, its log and what to do."""


# ------------------------------------------------------------------------------ the NIH folder
@dataclass
class Row:
    """One metadata row of the generated folder."""

    name: str
    patient: int
    follow_up: int
    labels: tuple[str, ...]


def choose_names(n_images: int, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """(image name, patient id, follow-up) for `n_images` images with NIH's real names and shares.

    Test patients (whole, from the packaged official test list) fill ~22.8 % of the images; the
    others get ids of 1..30,805 absent from that list and 1 + a heavy-tailed number of follow-ups,
    so the patient count is ~n_images x 30,805 / 112,120 and, at full size, exactly the real one.
    """
    from cxr14.data.official_split import official_test_images

    by_patient: dict[int, list[str]] = {}
    for name in sorted(official_test_images()):
        by_patient.setdefault(int(name[:8]), []).append(name)
    test_ids = list(by_patient)
    rng.shuffle(test_ids)
    target_test = round(n_images * NIH_TEST_IMAGES / NIH_IMAGES)
    chosen: list[tuple[str, int, int]] = []
    for patient in test_ids:
        if len(chosen) + len(by_patient[patient]) > target_test:
            continue
        chosen += [(name, patient, int(name[9:12])) for name in by_patient[patient]]
    n_test_patients = len({patient for _, patient, _ in chosen})
    n_rest = n_images - len(chosen)
    n_patients = max(1, round(n_images * NIH_PATIENTS / NIH_IMAGES) - n_test_patients)
    n_patients = min(n_patients, n_rest)
    free_ids = np.setdiff1d(np.arange(1, NIH_PATIENTS + 1), np.array(test_ids))
    patients = np.sort(rng.choice(free_ids, size=n_patients, replace=False))
    weights = rng.exponential(size=n_patients) ** 2
    counts = 1 + rng.multinomial(n_rest - n_patients, weights / weights.sum())
    for patient, count in zip(patients.tolist(), counts.tolist(), strict=True):
        chosen += [(f"{patient:08d}_{follow_up:03d}.png", patient, follow_up) for follow_up in range(count)]
    return sorted(chosen)


def label_rows(names: list[tuple[str, int, int]], rng: np.random.Generator) -> list[Row]:
    """Rows with NIH-like findings: one Markov chain of label sets per patient (phantom_labels)."""
    from cxr14.data.phantom_labels import sample_patient_labels

    per_patient: dict[int, list[tuple[str, int, int]]] = {}
    for entry in names:
        per_patient.setdefault(entry[1], []).append(entry)
    rows = []
    for patient, entries in per_patient.items():
        entries.sort(key=lambda entry: entry[2])
        for (name, _, follow_up), labels in zip(entries, sample_patient_labels(rng, len(entries)), strict=True):
            rows.append(Row(name, patient, follow_up, tuple(labels)))
    return sorted(rows, key=lambda row: row.name)


def add_boxes(rows: list[Row], image_size: int, rng: np.random.Generator) -> list[BoxRow]:
    """~984 boxes (scaled with the test share) on ~880 test images; each image's labels get its finding.

    Returns (image, NIH finding name, x, y, w, h) rows in image pixels, boxes inside the image.
    """
    from cxr14.data.boxes import BOX_FINDINGS
    from cxr14.data.official_split import official_test_images
    from cxr14.labels import NO_FINDING

    test = [index for index, row in enumerate(rows) if row.name in official_test_images()]
    n_boxes = min(len(test), round(NIH_BOXES * len(test) / NIH_TEST_IMAGES)) if test else 0
    n_images = max(1, round(n_boxes * NIH_BOXED_IMAGES / NIH_BOXES)) if n_boxes else 0
    boxed = rng.choice(test, size=n_images, replace=False).tolist() if n_images else []
    owners = boxed + rng.choice(boxed, size=n_boxes - n_images).tolist() if boxed else []
    nih_names = list(BOX_FINDINGS)
    boxes = []
    for index in owners:
        row = rows[index]
        nih = str(rng.choice(nih_names))
        if BOX_FINDINGS[nih] not in row.labels:
            row.labels = tuple(sorted({*row.labels, BOX_FINDINGS[nih]} - {NO_FINDING}))
        w, h = rng.uniform(0.05, 0.4, size=2) * image_size
        x, y = rng.uniform(0.05, 0.9) * (image_size - w), rng.uniform(0.05, 0.9) * (image_size - h)
        boxes.append((row.name, nih, float(x), float(y), float(w), float(h)))
    return boxes


def write_metadata(rows: list[Row], path: Path, rng: np.random.Generator) -> None:
    """Data_Entry_2017.csv: NIH's columns; age grows along follow-ups, sex and view per patient."""
    from cxr14.data.phantom import HEADER  # NIH's Data_Entry_2017.csv columns, as the phantom writes them

    base_age: dict[int, float] = {}
    female: dict[int, bool] = {}
    with path.open("w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(HEADER)
        for row in rows:
            if row.patient not in base_age:
                base_age[row.patient] = float(np.clip(rng.normal(46.5, 16.5), 1, 90))
                female[row.patient] = bool(rng.random() < 0.435)
            view = "AP" if rng.random() < 0.4 else "PA"
            width, height = (2992, 2991) if view == "PA" else (2500, 2048)
            spacing = 0.143 if view == "PA" else 0.168
            age = int(base_age[row.patient] + row.follow_up * 0.3)
            writer.writerow(
                [row.name, "|".join(row.labels), row.follow_up, row.patient, age, "F" if female[row.patient] else "M"]
                + [view, width, height, spacing, spacing]
            )


def write_bbox_list(boxes: list[BoxRow], path: Path) -> None:
    """BBox_List_2017.csv in NIH's format (header `Image Index,Finding Label,Bbox [x,y,w,h],,,`)."""
    from cxr14.data.boxes import NIH_HEADER

    lines = [NIH_HEADER] + [
        f"{name},{finding},{x:.6f},{y:.6f},{w:.6f},{h:.6f},,," for name, finding, x, y, w, h in boxes
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _render(task: tuple[int, int, str]) -> int:
    """Pool worker: render phantom radiograph `index` and write it as an 8-bit PNG; returns its bytes."""
    import cv2

    from cxr14.data.phantom import PNG_PARAMS, make_anatomy, render_image
    from cxr14.data.phantom_labels import sample_labels

    index, size, path = task
    rng = np.random.default_rng([7, index])
    image = render_image(make_anatomy(7, index + 1), sample_labels(rng, 1)[0], rng, size, "PA")
    ok, encoded = cv2.imencode(".png", image, PNG_PARAMS)
    if not ok:
        raise BenchmarkError(f"{path}: PNG encoding failed")
    Path(path).write_bytes(encoded.tobytes())
    return len(encoded)


def render_pool(pool: Path, distinct: int, size: int, workers: int) -> list[Path]:
    """`distinct` PNGs in `pool/` (kept ones of the right count and size are reused), on all cores."""
    pool.mkdir(parents=True, exist_ok=True)
    stamp = pool / "pool.json"
    paths = [pool / f"{index:06d}.png" for index in range(distinct)]
    if stamp.is_file() and json.loads(stamp.read_text()) == {"distinct": distinct, "size": size}:
        if all(path.is_file() for path in paths):
            return paths
    stamp.unlink(missing_ok=True)
    tasks = [(index, size, str(path)) for index, path in enumerate(paths)]
    with multiprocessing.get_context("spawn").Pool(workers or os.cpu_count() or 1) as workers_pool:
        for _ in workers_pool.imap_unordered(_render, tasks, chunksize=4):
            pass
    stamp.write_text(json.dumps({"distinct": distinct, "size": size}))
    return paths


def link_images(pool: list[Path], names: list[str], images: Path) -> str:
    """Link pool[i % len(pool)] as images/<names[i]>; "hardlink", or "symlink" if os.link is refused."""
    images.mkdir(parents=True, exist_ok=True)
    kind = "hardlink"
    for index, name in enumerate(names):
        source, target = pool[index % len(pool)], images / name
        if kind == "hardlink":
            try:
                os.link(source, target)
                continue
            except OSError as error:  # EXDEV, EPERM: another file system, or links are not allowed
                print(f"hard link refused ({error}); symlinking instead", file=sys.stderr)
                kind = "symlink"
        target.symlink_to(source.resolve())
    return kind


def build_nih_folder(
    work: Path, images: int, distinct: int, size: int, seed: int, workers: int, pool_dir: Path | None = None
) -> dict[str, Any]:
    """Write work/nih (official layout) from pool_dir (default work/pool); returns what was built and timings."""
    if images < 2 or not 1 <= distinct <= images:
        raise BenchmarkError(f"need --images >= 2 and 1 <= --distinct <= --images, got {images} and {distinct}")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    rows = label_rows(choose_names(images, rng), rng)
    boxes = add_boxes(rows, size, rng)
    pool = render_pool(pool_dir or work / "pool", distinct, size, workers)
    rendered = time.perf_counter()
    nih = work / "nih"
    if nih.exists():
        shutil.rmtree(nih)
    link = link_images(pool, [row.name for row in rows], nih / "images")
    write_metadata(rows, nih / "Data_Entry_2017.csv", rng)
    write_bbox_list(boxes, nih / "BBox_List_2017.csv")
    return {
        "path": str(nih),
        "images": len(rows),
        "distinct_pngs": distinct,
        "image_size": size,
        "patients": len({row.patient for row in rows}),
        "official_test_images": sum(_in_test(row.name) for row in rows),
        "boxes": len(boxes),
        "link": link,
        "png_bytes_distinct": sum(path.stat().st_size for path in pool),
        "render_s": rendered - started,
        "build_s": time.perf_counter() - started,
    }


def _in_test(name: str) -> bool:
    from cxr14.data.official_split import official_test_images

    return name in official_test_images()


# ------------------------------------------------------------------------------- the repo copy
def bench_params(
    nih: Path, models: list[str], train_steps: int, settings: list[str], commit: str | None = None
) -> dict[str, Any]:
    """The project's params.yaml (`commit`'s, or the working tree's) on `nih` data: `models`, one epoch of
    `train_steps` steps, CPU."""
    params = yaml.safe_load(project_file("params.yaml", commit))
    params["data"]["source"] = "nih"
    params["data"]["nih"]["path"] = str(nih)
    params["models"] = models
    params["train_seeds"] = params["train_seeds"][:1]
    params["train"].update(epochs=1, max_steps_per_epoch=train_steps, device="cpu")
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise BenchmarkError(f"--set {setting!r}: expected key=value, e.g. --set train.batch_size=16")
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return params


def project_file(name: str, commit: str | None) -> str:
    """The text of the project's file `name`: in the working tree, or at `commit`."""
    if commit is None:
        return (REPO_ROOT / name).read_text(encoding="utf-8")
    return subprocess.run(
        ["git", "show", f"{commit}:{name}"], cwd=REPO_ROOT, check=True, capture_output=True, text=True
    ).stdout


def copy_project(repo: Path, commit: str | None) -> None:
    """dvc.yaml, .gitignore, .dvcignore, pipeline/ and src/ into `repo`: the working tree's, or `commit`'s."""
    names = ("dvc.yaml", ".gitignore", ".dvcignore", "pipeline", "src")
    if commit is not None:
        archive = subprocess.run(["git", "archive", commit, *names], cwd=REPO_ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(repo)], input=archive.stdout, check=True)
        return
    for name in names[:3]:
        shutil.copy(REPO_ROOT / name, repo / name)
    for folder in names[3:]:
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))


def make_repo(repo: Path, params: dict[str, Any], commit: str | None = None) -> dict[str, str]:
    """A git + DVC repository at `repo` with the project's code (`commit`'s, or the working tree's) and
    `params`; returns the env to run it in."""
    repo.mkdir(parents=True)
    copy_project(repo, commit)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(repo / "src"),  # the copy's code, which its dvc.yaml hashes
        "MLFLOW_TRACKING_URI": f"sqlite:///{repo.parent / 'mlflow.db'}",
        "CXR14_NO_PROGRESS": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.org",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.org",
    }
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    # dvc init wrote its own .dvcignore and .dvc/config; use the project's (its cache link types).
    for name in (".dvcignore", ".dvc/config"):
        (repo / name).write_text(project_file(name, commit), encoding="utf-8")
    subprocess.run(["git", "add", "-A"], cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "scale benchmark"], cwd=repo, env=env, check=True, capture_output=True)
    return env


def stage_names(params: dict[str, Any]) -> list[str]:
    """The DAG order of dvc.yaml's stages for these params (one train@ per model and seed)."""
    models, seeds = params["models"], params["train_seeds"]
    return [
        "fetch",
        "split",
        "preprocess",
        "boxes",
        "expert_labels",
        *(f"train@{model}-{seed}" for model in models for seed in seeds),
        *(f"{stage}@{model}" for stage in ("evaluate", "profile", "explain", "export") for model in models),
        "report",
    ]


def script_markers(repo: Path) -> dict[str, str]:
    """Stage name (before '@') -> the `pipeline/<script>.py` its command runs, from dvc.yaml."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    markers = {}
    for name, stage in stages.items():
        cmd = stage.get("cmd") or stage["do"]["cmd"]
        markers[name] = next(word for word in cmd.split() if word.startswith("pipeline/"))
    return markers


# ---------------------------------------------------------------------------------- measuring
@dataclass
class Measurement:
    """One `dvc` call: its times (s), memory (bytes) and the disk after it (bytes per area)."""

    stage: str
    command: list[str]
    wall_s: float = 0.0
    script_s: float = 0.0
    dvc_before_s: float = 0.0
    dvc_after_s: float = 0.0
    dvc_s: float = 0.0
    script_seen: bool = False
    rss_max_process_bytes: int = 0
    rss_tree_peak_bytes: int = 0
    disk_bytes: dict[str, int] = field(default_factory=dict)
    disk_total_bytes: int = 0  # all DISK_AREAS, a file linked from two of them counted once


def _tree(process: psutil.Process) -> list[psutil.Process]:
    try:
        return [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _poll(process: psutil.Process, marker: str | None) -> tuple[int, float | None]:
    """(RSS summed over the tree, creation time of the oldest process running `marker`, if any).

    A process runs `marker` when one of its arguments starts with it or has it after a space: the
    script itself (`python pipeline/fetch.py`), or the shell DVC starts it with (`sh -c "python
    pipeline/fetch.py ..."`), whose creation is when DVC hands over to the stage's command.
    """
    rss, started = 0, None
    for member in _tree(process):
        try:
            rss += member.memory_info().rss
            if marker and any(re.search(rf"(^|\s){re.escape(marker)}", part) for part in member.cmdline()):
                created = member.create_time()
                started = created if started is None else min(started, created)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return rss, started


def measure(
    stage: str, command: list[str], repo: Path, env: dict[str, str], marker: str | None, poll: float, log: Path
):
    """Run `command` (a dvc call) in `repo`, polling its process tree; returns a Measurement.

    Raises:
        BenchmarkError: the command failed (the message quotes the end of its log).
    """
    result = Measurement(stage, command)
    with log.open("wb") as output:
        started = time.time()
        process = subprocess.Popen(command, cwd=repo, env=env, stdout=output, stderr=subprocess.STDOUT)
        watched = psutil.Process(process.pid)
        # Creation times are kernel start ticks added to a boot time rounded to the second, so they
        # are compared with the dvc process's own creation (at `started`), never with time.time().
        created = watched.create_time()
        script_start = script_end = None
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            now = time.time()
            if pid:
                break
            rss, seen = _poll(watched, marker)
            result.rss_tree_peak_bytes = max(result.rss_tree_peak_bytes, rss)
            if seen is not None:
                seen = started + max(0.0, seen - created)
                script_start = seen if script_start is None else min(script_start, seen)
            elif script_start is not None and script_end is None:
                script_end = now
            time.sleep(poll)
        process.returncode = os.waitstatus_to_exitcode(status)
    result.wall_s = now - started
    result.rss_max_process_bytes = usage.ru_maxrss * 1024  # KiB on Linux
    if script_start is not None:
        script_end = script_end if script_end is not None else now
        result.script_seen = True
        result.script_s = max(0.0, script_end - max(script_start, started))
        result.dvc_before_s = max(0.0, script_start - started)
        result.dvc_after_s = max(0.0, result.wall_s - result.dvc_before_s - result.script_s)
    result.dvc_s = result.wall_s - result.script_s
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchmarkError(f"{' '.join(command)} failed (exit {process.returncode}); log {log}:\n{tail}")
    return result


def allocated_files(root: Path) -> dict[tuple[int, int], int]:
    """Disk blocks in bytes of every inode under `root` (no symlink followed), keyed by (device, inode):
    a file hard-linked twice appears once."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in [".", *names]:
            try:
                stat = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            files[(stat.st_dev, stat.st_ino)] = stat.st_blocks * 512
    return files


def allocated_bytes(root: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Disk blocks under `root` (no symlink followed), each hard-linked file counted once per `seen`."""
    seen = set() if seen is None else seen
    files = allocated_files(root)
    total = sum(size for inode, size in files.items() if inode not in seen)
    seen.update(files)
    return total


def disk_usage(repo: Path) -> tuple[dict[str, int], int]:
    """(allocated bytes of each of DISK_AREAS in `repo`, 0 when absent; of all of them together, where
    an output hard-linked into .dvc/cache counts once), from one walk of each area."""
    per_area, blocks = {}, {}
    for area in DISK_AREAS:
        files = allocated_files(repo / area) if (repo / area).exists() else {}
        per_area[area] = sum(files.values())
        blocks.update(files)
    return per_area, sum(blocks.values())


# ------------------------------------------------------------------------------------- running
def run_pipeline(
    repo: Path, env: dict[str, str], stages: list[str], poll: float, results: list[Measurement], until: str | None
) -> list[Measurement]:
    """`dvc repro --single-item` of each stage in order, then a no-op `dvc repro`; one Measurement each.

    Measurements are appended to `results` as they are taken, so a caller still has those of the
    stages before a failure.
    """
    markers = script_markers(repo)
    logs = repo.parent / "logs"
    logs.mkdir(exist_ok=True)
    if until is not None:
        if until not in stages:
            raise BenchmarkError(f"--until {until}: not a stage of this run; choose one of {', '.join(stages)}")
        stages = stages[: stages.index(until) + 1]
    for stage in stages:
        marker = markers[stage.split("@")[0]]
        command = ["dvc", "repro", "--single-item", stage]
        result = measure(stage, command, repo, env, marker, poll, logs / f"{stage}.log")
        if not result.script_seen:
            raise BenchmarkError(f"{stage}: DVC did not run {marker} (log {logs / stage}.log); was it up to date?")
        result.disk_bytes, result.disk_total_bytes = disk_usage(repo)
        results.append(result)
        print(f"{stage}: {result.wall_s:.1f} s ({result.dvc_s:.1f} s DVC)", file=sys.stderr, flush=True)
    # After --until, `dvc repro <last stage>`: a no-op over the stages run (the rest never ran).
    target = [] if until is None else [until]
    noop = measure("no-op dvc repro", ["dvc", "repro", *target], repo, env, "pipeline/", poll, logs / "noop.log")
    if noop.script_seen:
        raise BenchmarkError(
            f"the no-op `dvc repro` re-ran a stage (log {logs / 'noop.log'}): a stage is not reproducible"
        )
    noop.disk_bytes, noop.disk_total_bytes = disk_usage(repo)
    results.append(noop)
    print(f"no-op dvc repro: {noop.wall_s:.1f} s", file=sys.stderr, flush=True)
    return results


def markdown_table(results: list[Measurement]) -> str:
    """The per-stage table: seconds, GB of RSS, GB on disk after the stage."""
    header = (
        "| stage | wall s | script s | DVC before s | DVC after s | DVC total s | peak RSS GB (largest process) "
        "| peak RSS GB (tree) | data GB | .dvc/cache GB | models GB | metrics GB | exports GB "
        "| on disk GB (each file once) |"
    )
    lines = [header, "|---|" + "---:|" * 13]
    for r in results:
        disk = " | ".join(f"{r.disk_bytes.get(area, 0) / GB:.3f}" for area in DISK_AREAS)
        lines.append(
            f"| {r.stage} | {r.wall_s:.1f} | {r.script_s:.1f} | {r.dvc_before_s:.1f} | {r.dvc_after_s:.1f} "
            f"| {r.dvc_s:.1f} | {r.rss_max_process_bytes / GB:.2f} | {r.rss_tree_peak_bytes / GB:.2f} | {disk} "
            f"| {r.disk_total_bytes / GB:.3f} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """What the numbers depend on: machine, versions."""
    from importlib.metadata import version

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / GB, 1),
        "python": platform.python_version(),
        "dvc": version("dvc"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=NIH_IMAGES, help="metadata rows = image files (%(default)s)")
    parser.add_argument("--distinct", type=int, default=3000, help="distinct PNGs, linked to reach --images")
    parser.add_argument("--image-size", type=int, default=1024, help="PNG side in px (%(default)s, like NIH)")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a new /tmp/scale-*)")
    parser.add_argument("--models", nargs="+", default=["cnn"], help="params.yaml models (%(default)s)")
    parser.add_argument("--train-steps", type=int, default=50, help="train.max_steps_per_epoch (1 epoch)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other params key")
    parser.add_argument("--pool", type=Path, default=None, help="folder of the distinct PNGs (default: WORK/pool)")
    parser.add_argument(
        "--from-commit", default=None, metavar="REV", help="benchmark this commit's code (default: the working tree)"
    )
    parser.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage (e.g. boxes)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated metadata")
    parser.add_argument("--workers", type=int, default=0, help="processes rendering PNGs (0 = all cores)")
    parser.add_argument("--poll", type=float, default=0.05, help="process-tree polling interval in s")
    parser.add_argument("--json", type=Path, default=None, help="write every number here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (else it is deleted)")
    return parser.parse_args(argv)


def report_results(args: argparse.Namespace, folder: dict, params: dict, results: list, failure: str | None) -> None:
    """The Markdown table on stdout and, with --json, the JSON report (also after a failed stage)."""
    report = {
        "environment": environment(),
        "folder": folder,
        "split_method": params["split"]["method"],
        "params": {key: params[key] for key in ("models", "train_seeds", "evaluate")} | {"train": params["train"]},
        "code": args.from_commit or "working tree",
        "method": f"dvc repro --single-item <stage>; process tree polled every {args.poll:.3f} s",
        "stages": [asdict(result) for result in results],
        "failure": failure,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(markdown_table(results))
    print(
        f"\n{folder['images']:,} images ({folder['distinct_pngs']:,} distinct {args.image_size} px PNGs, "
        f"{folder['link']}s), {folder['patients']:,} patients, {folder['official_test_images']:,} official "
        f"test images, {folder['boxes']} boxes; folder built in {folder['build_s']:.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="scale-", dir="/tmp"))
    created = not work.exists() or not any(work.iterdir())
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"
    if repo.exists():
        raise BenchmarkError(f"{repo} exists from an earlier run; delete it or choose another --work")
    results: list[Measurement] = []
    failure = None
    try:
        print(f"building {args.images:,} images ({args.distinct:,} distinct) in {work}", file=sys.stderr, flush=True)
        folder = build_nih_folder(work, args.images, args.distinct, args.image_size, args.seed, args.workers, args.pool)
        params = bench_params(work / "nih", args.models, args.train_steps, args.set, args.from_commit)
        env = make_repo(repo, params, args.from_commit)
        # Each stage in its own process under dvc, whose process tree is what is measured; a warm
        # server's fork would be outside it (cxr14.warm).
        env["CXR14_WARM"] = "0"
        linked: set[tuple[int, int]] = set()  # the folder's images are links to the pool's files: count them once
        pool_bytes = allocated_bytes(args.pool or work / "pool", linked)
        folder["allocated_bytes"] = pool_bytes + allocated_bytes(work / "nih", linked)
        try:
            run_pipeline(repo, env, stage_names(params), args.poll, results, args.until)
        except BenchmarkError as error:
            failure = str(error)
            print(f"error: {failure}", file=sys.stderr)
        report_results(args, folder, params, results, failure)
    finally:
        if not args.keep:
            clean_up(work, whole=created)
    return 1 if failure else 0


def clean_up(work: Path, whole: bool) -> None:
    """Delete `work` if this run created it, else only what a run writes there (never a --pool elsewhere)."""
    if whole:
        shutil.rmtree(work, ignore_errors=True)
        return
    for name in ("nih", "pool", "repo", "logs", "mlruns", "mlartifacts"):
        shutil.rmtree(work / name, ignore_errors=True)
    for path in work.glob("mlflow.db*"):
        path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
