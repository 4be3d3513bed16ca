"""NIH bounding boxes: reading BBox_List_2017.csv, validating it, and scaling it onto a real cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr14.config import SplitConfig
from cxr14.data.boxes import BBOX_FILE, BOX_COLUMNS, BoxError, boxes_in_cache, read_bbox_list, write_boxes
from cxr14.data.cache import build_cache, open_split
from cxr14.data.metadata import ImageChangedError, image_files, load_metadata
from cxr14.data.nih_layout import detect_layout, index_raw
from cxr14.data.split import attach_splits
from cxr14.stages.split import make_splits
from tests.conftest import REPO_ROOT, write_nih_folder

HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
WIDE = "00000001_000.png"  # 512 x 256


def _boxes(raw: Path, cache: Path, split: str = "test") -> pd.DataFrame:
    """boxes_in_cache as the stage calls it: images found (and checked) through data/raw."""
    return boxes_in_cache(raw, cache, image_files(raw).checked_path, split)


def _write_bbox(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_reads_the_real_nih_format(tmp_path: Path) -> None:
    path = _write_bbox(
        tmp_path / BBOX_FILE,
        "00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661",
        "00014716_007.png,Infiltrate,10,20,30,40",
        "",  # a blank line does not shift the line numbers of later rows
        "00014716_007.png,Nodule,1e2,5.5,7,8",
    )
    frame = read_bbox_list(path)
    assert list(frame.columns) == ["image_id", "finding", "x", "y", "w", "h"]
    assert frame["finding"].tolist() == ["Atelectasis", "Infiltration", "Nodule"]  # NIH "Infiltrate"
    assert frame["image_id"].tolist() == ["00013118_008.png", "00014716_007.png", "00014716_007.png"]
    assert frame.index.tolist() == [2, 3, 5]  # 1-based CSV lines
    assert all(frame[c].dtype == np.float64 for c in "xywh")
    assert frame.loc[2, "x"] == pytest.approx(225.084745762712) and frame.loc[5, "x"] == 100.0


def test_accepts_a_header_named_x_y_w_h(tmp_path: Path) -> None:
    path = _write_bbox(tmp_path / "b.csv", "a.png,Infiltration,1,2,3,4", header="Image Index,Finding Label,x,y,w,h")
    frame = read_bbox_list(path)
    assert frame.iloc[0].tolist() == ["a.png", "Infiltration", 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "b.png,Pneumonitis,1,2,3,4",
            r"line 3: unknown finding 'Pneumonitis'; valid findings: Atelectasis, .*Infiltrate",
        ),
        ("b.png,Mass,1,2,0,4", r"line 3: box of size w=0, h=4; width and height must be > 0"),
        ("b.png,Mass,1,2,3,-4", r"line 3: .*h=-4"),
        ("b.png,Mass,1,two,3,4", r"line 3: y = 'two' is not a finite number"),
        ("b.png,Mass,1,2,inf,4", r"line 3: w = 'inf' is not a finite number"),
        ("b.png,Mass,1,2,3", r"line 3: h = '' is not a finite number"),
        ("b.png,Mass,1,2,3,4,5", r"line 3: unexpected value '5' after the h column"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = _write_bbox(tmp_path / BBOX_FILE, "a.png,Mass,1,2,3,4", row)
    with pytest.raises(BoxError, match=message) as error:
        read_bbox_list(path)
    assert str(path) in str(error.value)


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = _write_bbox(tmp_path / BBOX_FILE, "a.png,Mass,1,2,3", header="Image Index,Finding Label,x,y,w")
    with pytest.raises(BoxError, match=r"missing column\(s\) h; expected the header"):
        read_bbox_list(path)


@pytest.fixture(scope="module")
def raw_and_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An NIH download of 12 real 512 px PNGs of 6 patients (one 512 x 256), fetched as NIH data
    is (data/raw holds the manifest), and its 64 px cache."""
    root = tmp_path_factory.mktemp("boxes")
    rows = [
        (f"{patient:08d}_{follow:03d}.png", "Mass" if follow else "Infiltration", str(patient))
        for patient in range(1, 7)
        for follow in range(2)
    ]
    download = write_nih_folder(root / "download", rows, size=512)
    assert cv2.imwrite(str(download / "images" / WIDE), np.full((256, 512), 128, np.uint8))
    raw = root / "raw"
    index_raw(detect_layout(download), raw)
    metadata = load_metadata(raw)
    table, _ = make_splits(metadata, SplitConfig(val_fraction=0.3, test_fraction=0.3), seed=0)
    table.to_csv(root / "splits.csv", index=False)
    frame, labels = attach_splits(metadata, root / "splits.csv")
    # The wide image must be in the test split for the aspect check below.
    frame.loc[frame["patient_id"] == "1", "split"] = "test"
    build_cache(frame, labels, metadata.images.checked_paths(frame["image_id"]), root / "cache", size=64, workers=1)
    return raw, root / "cache"


def test_boxes_are_scaled_to_the_cache_and_others_dropped(raw_and_cache, caplog) -> None:
    raw, cache = raw_and_cache
    _, index = open_split(cache, "test")
    test_ids = index["image_id"].tolist()
    square = next(image_id for image_id in test_ids if image_id != WIDE)
    outside = next(f"{p:08d}_000.png" for p in range(1, 7) if f"{p:08d}_000.png" not in test_ids)
    _write_bbox(
        raw / BBOX_FILE,
        f"{square},Nodule,80,160,40,24",
        f"{square},Infiltrate,8,16,400,240",
        f"{WIDE},Mass,64,32,128,64",
        f"{outside},Mass,1,2,3,4",  # image in another split: dropped
        "99999999_000.png,Mass,1,2,3,4",
    )  # image in no split at all: dropped
    caplog.set_level("INFO")
    try:
        frame = _boxes(raw, cache)
    finally:
        (raw / BBOX_FILE).unlink()
    assert list(frame.columns) == list(BOX_COLUMNS)
    assert len(frame) == 3 and "3 of 5 in test split" in caplog.text and "2 dropped" in caplog.text
    by_key = {(r.image_id, r.finding): r for r in frame.itertuples(index=False)}
    nodule = by_key[(square, "Nodule")]  # 512 px -> 64 px: a factor of 1/8
    assert (nodule.x, nodule.y, nodule.w, nodule.h) == pytest.approx((10, 20, 5, 3))
    assert (by_key[(square, "Infiltration")].w, by_key[(square, "Infiltration")].h) == pytest.approx((50, 30))
    wide = by_key[(WIDE, "Mass")]  # 512 x 256 -> 64 x 64: 1/8 across, 1/4 down
    assert (wide.x, wide.y, wide.w, wide.h) == pytest.approx((8, 8, 16, 16))
    for r in frame.itertuples(index=False):  # `row` points at the image's pixels in the cache
        assert index.loc[r.row, "image_id"] == r.image_id
    assert frame["row"].dtype == np.int64
    assert list(frame.sort_values(["row", "finding", "x", "y"]).index) == list(frame.index)


def test_boxes_past_the_border_are_clipped_and_boxes_outside_refused(raw_and_cache) -> None:
    raw, cache = raw_and_cache
    _write_bbox(raw / BBOX_FILE, f"{WIDE},Effusion,-32,200,600,100")
    try:
        box = _boxes(raw, cache).iloc[0]
        assert (box.x, box.y, box.w, box.h) == pytest.approx((0, 50, 64, 14))  # to 512 x 256, then scaled
        _write_bbox(raw / BBOX_FILE, f"{WIDE},Effusion,10,10,5,5", f"{WIDE},Effusion,10,300,5,5")
        with pytest.raises(BoxError, match=rf"line 3: .* lies entirely outside {WIDE} \(512 x 256 px\)"):
            _boxes(raw, cache)
    finally:
        (raw / BBOX_FILE).unlink()


def test_no_bbox_file_gives_an_empty_frame(raw_and_cache, caplog) -> None:
    raw, cache = raw_and_cache
    caplog.set_level("INFO")
    frame = _boxes(raw, cache)
    assert frame.empty and list(frame.columns) == list(BOX_COLUMNS)
    assert "localisation skipped" in caplog.text


def test_an_image_changed_since_fetch_stops_the_boxes(raw_and_cache) -> None:
    raw, cache = raw_and_cache
    _write_bbox(raw / BBOX_FILE, f"{WIDE},Mass,64,32,128,64")
    wide = image_files(raw).paths[WIDE]
    before = os.stat(wide)
    os.utime(wide, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # touched, same bytes
    try:
        with pytest.raises(ImageChangedError, match=rf"{WIDE}.* changed since fetch.*dvc repro -f fetch"):
            _boxes(raw, cache)
    finally:
        os.utime(wide, ns=(before.st_atime_ns, before.st_mtime_ns))
        (raw / BBOX_FILE).unlink()


def test_stage_script_writes_the_table(raw_and_cache, tmp_path: Path) -> None:
    raw, cache = raw_and_cache
    _, index = open_split(cache, "val")
    image_id = index["image_id"][0]
    _write_bbox(raw / BBOX_FILE, f"{image_id},Cardiomegaly,100,200,300,150")
    try:
        out = tmp_path / "out" / "boxes.csv"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "CXR14_NO_PROGRESS": "1"}
        done = subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "pipeline" / "boxes.py"),
                "--raw",
                str(raw),
                "--cache",
                str(cache),
                "--out",
                str(out),
                "--split",
                "val",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        expected = f"row,image_id,finding,x,y,w,h\n0,{image_id},Cardiomegaly,12.500,25.000,37.500,18.750\n"
        assert out.read_text() == expected
    finally:
        (raw / BBOX_FILE).unlink()


def test_write_boxes_is_stable(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"row": [3], "image_id": ["a.png"], "finding": ["Mass"], "x": [1 / 3], "y": [2.0], "w": [10.12345], "h": [7.0]}
    )
    write_boxes(frame, tmp_path / "boxes.csv")
    expected = "row,image_id,finding,x,y,w,h\n3,a.png,Mass,0.333,2.000,10.123,7.000\n"
    assert (tmp_path / "boxes.csv").read_text() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["boxes.csv"]  # no temp file left behind


def test_phantom_boxes_reach_the_cache(tmp_path: Path) -> None:
    from cxr14.data.phantom import generate_phantom

    raw = tmp_path / "raw"
    generate_phantom(raw, n_patients=6, image_size=64, seed=3, workers=1, progress=False)
    original = read_bbox_list(raw / BBOX_FILE)
    metadata = load_metadata(raw)
    frame = metadata.frame.assign(split="test")
    build_cache(frame, metadata.labels, metadata.images.paths, tmp_path / "cache", size=32, workers=1)
    boxes = _boxes(raw, tmp_path / "cache")
    assert len(boxes) == len(original) > 0
    merged = boxes.merge(original, on=["image_id", "finding"], suffixes=("", "_png"))
    for c in "xywh":  # 64 px PNGs -> 32 px cache
        assert np.allclose(merged[c], merged[f"{c}_png"] / 2)
