import json

import cv2
import numpy as np
import pandas as pd
import pytest

from cxr14.config import SplitConfig
from cxr14.data.cache import ImageDecodeError, build_cache, decode_and_resize, open_split, split_labels
from cxr14.data.metadata import load_metadata
from cxr14.labels import LABELS
from cxr14.stages.split import make_splits


def build(raw, cache_dir, size=32):
    metadata = load_metadata(raw)
    table, _ = make_splits(metadata, SplitConfig(), seed=0)
    frame = metadata.frame.assign(split=metadata.frame["image_id"].map(dict(zip(table["Image Index"], table["split"]))))
    return build_cache(frame, metadata.labels, metadata.images.paths, cache_dir, size=size, workers=2), metadata


def test_cache_layout_labels_and_pixels(small_nih, tmp_path):
    summary, metadata = build(small_nih, tmp_path / "cache")
    assert sum(summary["splits"].values()) == 30
    images, index = open_split(tmp_path / "cache", "train")
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32)
    assert list(index.columns) == ["image_id", "patient_id", *LABELS, "age", "sex", "view", "follow_up"]
    # row 0 of the cache is exactly the area-resized source PNG, with its own labels
    image_id = index["image_id"][0]
    source = cv2.imread(str(small_nih / "images" / image_id), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(images[0], cv2.resize(source, (32, 32), interpolation=cv2.INTER_AREA))
    row = metadata.frame.index[metadata.frame["image_id"] == image_id][0]
    assert np.array_equal(split_labels(index)[0], metadata.labels[row])


def test_same_inputs_same_bytes(small_nih, tmp_path):
    build(small_nih, tmp_path / "a")
    build(small_nih, tmp_path / "b")
    for name in ("train.npy", "val.npy", "test.npy", "train.csv", "cache.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_corrupt_png_names_the_file_and_leaves_no_cache(small_nih, tmp_path):
    bad = small_nih / "images" / "00000004_001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageDecodeError, match="00000004_001.png"):
        build(small_nih, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing a later stage would trust


def test_interrupted_preprocess_resumes_and_gives_the_same_bytes(small_nih, tmp_path, caplog, monkeypatch):
    import cxr14.data.cache as cache

    monkeypatch.setattr(cache, "CHUNK", 4)  # several blocks per split
    build(small_nih, tmp_path / "reference")
    # The last image (by name) breaks: earlier splits/blocks are done when the run stops.
    last = sorted((small_nih / "images").iterdir())[-1]
    good = last.read_bytes()
    last.write_bytes(b"not a png")
    with pytest.raises(ImageDecodeError):
        build(small_nih, tmp_path / "cache")
    progress = json.loads((tmp_path / ".cache.partial" / "progress.json").read_text())
    assert sum(progress["done"].values()) > 0
    last.write_bytes(good)  # the user fixes the file and re-runs
    caplog.set_level("INFO")
    build(small_nih, tmp_path / "cache")
    assert "resuming preprocess" in caplog.text
    assert not (tmp_path / ".cache.partial").exists()
    for name in ("train.npy", "val.npy", "test.npy", "train.csv", "cache.json"):
        assert (tmp_path / "cache" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name


def test_16_bit_and_rgba_become_8_bit_gray(tmp_path):
    deep = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    rgba = np.dstack([np.full((64, 64), 200, np.uint8)] * 3 + [np.full((64, 64), 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    for name in ("deep.png", "rgba.png"):
        image = decode_and_resize(tmp_path / name, 32)
        assert image.dtype == np.uint8 and image.shape == (32, 32)
    assert decode_and_resize(tmp_path / "rgba.png", 32).mean() == pytest.approx(200, abs=1)
    from cxr14.data.cache import _decode

    cv2.imwrite(str(tmp_path / "gray.png"), np.zeros((64, 64), np.uint8))
    assert [_decode(tmp_path / name, 32)[1] for name in ("deep.png", "rgba.png", "gray.png")] == [True, True, False]


def test_stale_or_too_small_cache_is_refused_naming_cache_json(tiny_cache):
    from cxr14.data.cache import CacheMismatchError, check_cache_size

    summary = tiny_cache / "cache.json"
    assert check_cache_size(tiny_cache, image_size=32, preprocess_size=32) == 32
    assert check_cache_size(tiny_cache, image_size=16, preprocess_size=32) == 32  # downsampling is honest
    # Built at 32 px while params say 64: stale, whatever image_size asks.
    with pytest.raises(
        CacheMismatchError,
        match=rf"^{summary}: the cache was built at 32 px but preprocess.size is "
        r"64 in p.yaml: the cache is stale; rebuild it with `dvc repro "
        r"preprocess` \(or set preprocess.size back to 32\)$",
    ):
        check_cache_size(tiny_cache, image_size=32, preprocess_size=64, model="cnn", source="p.yaml")
    with pytest.raises(
        CacheMismatchError,
        match=rf"^{summary}: the cache holds 32 px images but train.image_size "
        r"\(or train.overrides.cnn.image_size\) is 64 in params.yaml: the "
        r"model would see upsampled 32 px images; lower it to at most 32",
    ):
        check_cache_size(tiny_cache, image_size=64, model="cnn")
    assert issubclass(CacheMismatchError, ValueError)  # a one-line error in the stage scripts


def test_cache_smaller_than_a_trained_model_is_refused(tiny_cache, tmp_path):
    from cxr14.data.cache import CacheMismatchError, check_cache_for_trained_model

    model_dir = tmp_path / "models" / "cnn"
    model_dir.mkdir(parents=True)
    assert check_cache_for_trained_model(tiny_cache, model_dir) is None  # nothing recorded yet
    (model_dir / "train.json").write_text(json.dumps({"model": "cnn", "image_size": 32}))
    assert check_cache_for_trained_model(tiny_cache, model_dir) == 32
    (model_dir / "train.json").write_text(json.dumps({"model": "cnn", "image_size": 64}))
    with pytest.raises(
        CacheMismatchError,
        match=rf"{tiny_cache / 'cache.json'}: the cache holds 32 px images but the "
        rf"model in {model_dir} was trained at 64 px",
    ):
        check_cache_for_trained_model(tiny_cache, model_dir)


def test_cache_without_summary_says_to_run_preprocess(tmp_path):
    from cxr14.data.cache import check_cache_size

    with pytest.raises(FileNotFoundError, match=r"cache.json: cache file missing; run the preprocess stage"):
        check_cache_size(tmp_path, image_size=32)


def test_index_has_the_subgroup_attributes_and_cache_json_counts_the_unknown(small_nih, tmp_path):
    from cxr14.data.cache import split_attributes

    csv = small_nih / "Data_Entry_2017.csv"
    rows = csv.read_text().splitlines()
    rows[1] = rows[1].replace(",50,M,PA", ",58Y,,PA")  # 00000001_000.png: unknown age and sex
    csv.write_text("\n".join(rows) + "\n")
    summary, metadata = build(small_nih, tmp_path / "cache")
    split = next(
        name
        for name in ("train", "val", "test")
        if "00000001_000.png" in open_split(tmp_path / "cache", name)[1]["image_id"].tolist()
    )
    _, index = open_split(tmp_path / "cache", split)
    assert list(index.columns) == ["image_id", "patient_id", *LABELS, "age", "sex", "view", "follow_up"]
    attributes = split_attributes(index).set_index(index["image_id"])
    assert attributes.loc["00000001_000.png"].tolist() == [pd.NA, "unknown", "PA", 0]
    assert attributes.loc["00000001_001.png"].tolist() == [50, "M", "PA", 1]
    assert summary["unknown_attributes"][split] == {"age": 1, "sex": 1, "view": 0, "follow_up": 0}
    others = {name: counts for name, counts in summary["unknown_attributes"].items() if name != split}
    assert all(counts == {"age": 0, "sex": 0, "view": 0, "follow_up": 0} for counts in others.values())
    assert (
        json.loads((tmp_path / "cache" / "cache.json").read_text())["unknown_attributes"]
        == summary["unknown_attributes"]
    )
    assert "00000001_000.png,1," in (tmp_path / "cache" / f"{split}.csv").read_text()  # the empty age cell
    assert ",,unknown,PA,0\n" in (tmp_path / "cache" / f"{split}.csv").read_text()


def test_attributes_leave_the_images_and_labels_as_they_were(small_nih, tmp_path):
    """The .npy files and the first 17 index columns are those of a frame without the attributes (before them)."""
    metadata = load_metadata(small_nih)
    table, _ = make_splits(metadata, SplitConfig(), seed=0)
    frame = metadata.frame.assign(split=metadata.frame["image_id"].map(dict(zip(table["Image Index"], table["split"]))))
    old_style = frame[["image_id", "patient_id", "split"]]
    build_cache(frame, metadata.labels, metadata.images.paths, tmp_path / "new", size=32, workers=2)
    summary = build_cache(old_style, metadata.labels, metadata.images.paths, tmp_path / "old", size=32, workers=2)
    for split in ("train", "val", "test"):
        assert (tmp_path / "new" / f"{split}.npy").read_bytes() == (tmp_path / "old" / f"{split}.npy").read_bytes()
        _, new = open_split(tmp_path / "new", split)
        _, old = open_split(tmp_path / "old", split)
        assert new.iloc[:, :17].equals(old.iloc[:, :17])
        assert (old["sex"] == "unknown").all() and old["age"].isna().all()  # no attributes given: all unknown
        assert summary["unknown_attributes"][split]["age"] == len(old)
    _, legacy = open_split(tmp_path / "old", "test")
    from cxr14.data.cache import split_attributes

    legacy = legacy.drop(columns=["age", "sex", "view", "follow_up"])  # a cache written before issue 14
    assert split_attributes(legacy)["view"].eq("unknown").all() and len(split_labels(legacy)) == len(legacy)
