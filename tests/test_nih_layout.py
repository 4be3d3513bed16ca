"""Local NIH layouts (official, Kaggle, sample) are recognised and recorded in place, never copied."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr14.data.metadata import IMAGES_MANIFEST, MANIFEST_COLUMNS, image_files, load_metadata
from cxr14.data.nih_layout import NihLayoutError, detect_layout, index_raw
from tests.conftest import NIH_COLUMNS

FINDINGS = ["No Finding", "Effusion", "Mass|Nodule", "Cardiomegaly"]


def _rows(n_patients: int = 3, follow_ups: int = 2) -> list[tuple[str, str, str]]:
    return [
        (f"{patient:08d}_{follow:03d}.png", FINDINGS[(patient + follow) % len(FINDINGS)], str(patient))
        for patient in range(1, n_patients + 1)
        for follow in range(follow_ups)
    ]


def _write_pngs(folder: Path, names: list[str], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        assert cv2.imwrite(str(folder / name), rng.integers(0, 256, size=(32, 32), dtype=np.uint8))


def _write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [
        [image, findings, follow_up, patient, 50, "F", "PA"]
        for follow_up, (image, findings, patient) in enumerate(rows)
    ]
    pd.DataFrame(records, columns=NIH_COLUMNS).to_csv(path, index=False)


def build_layout(kind: str, root: Path, rows: list[tuple[str, str, str]]) -> Path:
    """Write a tiny NIH download in one of the layouts users have on disk."""
    names = [image for image, _, _ in rows]
    if kind == "official":
        _write_pngs(root / "images", names)
        _write_csv(root / "Data_Entry_2017_v2020.csv", rows)
    elif kind == "kaggle":
        half = len(names) // 2
        _write_pngs(root / "images_001" / "images", names[:half])
        _write_pngs(root / "images_002" / "images", names[half:], seed=1)
        _write_csv(root / "Data_Entry_2017.csv", rows)
    elif kind == "sample":  # CSV next to sample/, as nih-chest-xrays/sample unpacks
        _write_pngs(root / "sample" / "images", names)
        _write_csv(root / "sample_labels.csv", rows)
    elif kind == "sample_nested":  # CSV inside sample/
        _write_pngs(root / "sample" / "images", names)
        _write_csv(root / "sample" / "sample_labels.csv", rows)
    else:
        raise AssertionError(kind)
    return root


@pytest.mark.parametrize(
    ("built", "kind", "n_dirs", "csv_name"),
    [
        ("official", "official", 1, "Data_Entry_2017_v2020.csv"),
        ("kaggle", "kaggle", 2, "Data_Entry_2017.csv"),
        ("sample", "sample", 1, "sample_labels.csv"),
        ("sample_nested", "sample", 1, "sample_labels.csv"),
    ],
)
def test_detect_and_record_without_copying(tmp_path, caplog, built, kind, n_dirs, csv_name):
    rows = _rows()
    root = build_layout(built, tmp_path / "download", rows)
    layout = detect_layout(root)
    assert (layout.kind, len(layout.image_dirs), layout.metadata_csv.name) == (kind, n_dirs, csv_name)

    out_dir = tmp_path / "project" / "data" / "raw"
    caplog.set_level("INFO")
    assert index_raw(layout, out_dir) == len(rows)
    assert f"{n_dirs} image folder" in caplog.text and f"{len(rows):,} PNGs" in caplog.text

    # No image was copied or linked: data/raw holds the metadata copy and the manifest, nothing else.
    assert sorted(path.name for path in out_dir.iterdir()) == ["Data_Entry_2017.csv", IMAGES_MANIFEST]
    manifest = pd.read_csv(out_dir / IMAGES_MANIFEST, dtype={"Image Index": str, "path": str})
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert manifest["Image Index"].tolist() == sorted(image for image, _, _ in rows)  # sorted: stable bytes
    for name, path, size, mtime_ns in manifest.itertuples(index=False):
        assert os.path.isabs(path) and Path(path).name == name
        assert Path(path).parent in {d.resolve() for d in layout.image_dirs}
        stat = os.stat(path)
        assert (size, mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert (out_dir / "Data_Entry_2017.csv").read_bytes() == layout.metadata_csv.read_bytes()
    assert not (out_dir / "BBox_List_2017.csv").exists()  # none in the download, none made up
    assert not list(out_dir.parent.glob(".raw.*"))  # the staging folder was renamed into place

    metadata = load_metadata(out_dir)
    assert len(metadata.frame) == len(rows) and metadata.labels.shape == (len(rows), 15)
    assert set(metadata.frame["patient_id"]) == {"1", "2", "3"}


def test_refetch_rewrites_the_manifest_and_keeps_the_download(tmp_path):
    rows = _rows()
    root = build_layout("official", tmp_path / "download", rows)
    (root / "images" / f"._{rows[0][0]}").write_bytes(b"macOS resource fork")  # never an image
    out_dir = tmp_path / "raw"
    assert index_raw(detect_layout(root), out_dir) == len(rows)
    first = (out_dir / IMAGES_MANIFEST).read_bytes()
    assert index_raw(detect_layout(root), out_dir) == len(rows)
    assert (out_dir / IMAGES_MANIFEST).read_bytes() == first  # same folder, same bytes: DVC sees no change
    (root / "images" / rows[0][0]).unlink()  # the user removes an image, then fetch runs again
    assert index_raw(detect_layout(root), out_dir) == len(rows) - 1
    assert len(list((root / "images").iterdir())) == len(rows)  # rows[1:] + the dot file: nothing deleted
    assert rows[0][0] not in image_files(out_dir).paths


def test_symlinked_images_are_recorded_by_their_target(tmp_path):
    rows = _rows(n_patients=1)
    root = build_layout("official", tmp_path / "download", rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = root / "images" / rows[0][0]
    moved.rename(elsewhere / rows[0][0])
    os.symlink(elsewhere / rows[0][0], moved)
    index_raw(detect_layout(root), tmp_path / "raw")
    paths = image_files(tmp_path / "raw").paths
    assert paths[rows[0][0]] == str((elsewhere / rows[0][0]).resolve())
    assert paths[rows[1][0]] == str((root / "images" / rows[1][0]).resolve())


BBOX_TEXT = "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_000.png,Infiltrate,1.5,2,10,12\n"


@pytest.mark.parametrize(
    ("built", "bbox_folder"),
    [("official", "."), ("kaggle", "."), ("sample", "."), ("sample_nested", "sample")],
)
def test_bbox_list_is_copied_beside_the_metadata(tmp_path, caplog, built, bbox_folder):
    rows = _rows()
    root = build_layout(built, tmp_path / "download", rows)
    (root / bbox_folder / "BBox_List_2017.csv").write_text(BBOX_TEXT)
    out_dir = tmp_path / "raw"
    caplog.set_level("INFO")
    assert index_raw(detect_layout(root), out_dir) == len(rows)
    copied = out_dir / "BBox_List_2017.csv"
    assert copied.read_text() == BBOX_TEXT and not copied.is_symlink()
    assert "BBox_List_2017.csv" in caplog.text
    # A re-fetch after the user removed it leaves no stale copy behind.
    (root / bbox_folder / "BBox_List_2017.csv").unlink()
    index_raw(detect_layout(root), out_dir)
    assert not copied.exists()


def test_empty_folder_lists_what_was_expected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(NihLayoutError) as error:
        detect_layout(tmp_path / "empty")
    message = str(error.value)
    for expected in (
        "images/*.png",
        "Data_Entry_2017_v2020.csv",
        "images_001/images",
        "sample/images",
        "sample_labels.csv",
        "an empty folder",
    ):
        assert expected in message
    with pytest.raises(NihLayoutError, match="is not a folder"):
        detect_layout(tmp_path / "missing")


def test_partial_layout_says_what_was_found(tmp_path):
    _write_pngs(tmp_path / "images", ["00000001_000.png"])  # images but no metadata CSV
    with pytest.raises(NihLayoutError, match=r"Found: images/"):
        detect_layout(tmp_path)


def test_duplicate_names_across_kaggle_folders_name_both_paths(tmp_path):
    root = build_layout("kaggle", tmp_path / "download", _rows())
    _write_pngs(root / "images_002" / "images", ["00000001_000.png"])  # also in images_001
    layout = detect_layout(root)
    with pytest.raises(NihLayoutError) as error:
        index_raw(layout, tmp_path / "raw")
    message = str(error.value)
    assert str(root.resolve() / "images_001" / "images" / "00000001_000.png") in message
    assert str(root.resolve() / "images_002" / "images" / "00000001_000.png") in message
    assert not (tmp_path / "raw").exists()  # nothing half-written is left behind


def test_kaggle_folder_without_images_subfolder(tmp_path):
    root = build_layout("kaggle", tmp_path / "download", _rows())
    (root / "images_003").mkdir()
    with pytest.raises(NihLayoutError, match=r"images_003 has no images/ subfolder"):
        detect_layout(root)


def test_official_and_kaggle_together_is_ambiguous(tmp_path):
    root = build_layout("kaggle", tmp_path / "download", _rows())
    _write_pngs(root / "images", ["00000001_000.png"])
    with pytest.raises(NihLayoutError, match="both the official layout"):
        detect_layout(root)


def test_output_folder_must_not_contain_the_download(tmp_path):
    root = build_layout("official", tmp_path / "raw" / "nih", _rows())
    with pytest.raises(NihLayoutError, match="would delete the download"):
        index_raw(detect_layout(root), tmp_path / "raw")
    assert len(list((root / "images").iterdir())) == 6
