import os

import pandas as pd
import pytest

from cxr14.data.metadata import (
    IMAGES_MANIFEST,
    MANIFEST_COLUMNS,
    ImageChangedError,
    MetadataError,
    image_files,
    load_metadata,
)
from cxr14.labels import UnknownFindingError
from tests.conftest import write_nih_folder


def test_loads_and_normalises(small_nih):
    metadata = load_metadata(small_nih)
    assert len(metadata.frame) == 30 and metadata.labels.shape == (30, 15)
    assert metadata.frame["patient_id"].map(type).eq(str).all()


def test_unknown_finding_names_file_row_and_image(tmp_path):
    rows = [("00000001_000.png", "Effusion", "1"), ("00000002_000.png", "Infiltrate", "2")]
    raw = write_nih_folder(tmp_path, rows)
    with pytest.raises(UnknownFindingError, match=r"'Infiltrate' at .*Data_Entry_2017.csv line 3 \(00000002_000.png\)"):
        load_metadata(raw)


def test_missing_image_is_an_error_unless_skipped(tmp_path, caplog):
    rows = [(f"0000000{i}_000.png", "No Finding", str(i)) for i in range(1, 5)]
    raw = write_nih_folder(tmp_path, rows)
    (raw / "images" / "00000003_000.png").unlink()
    with pytest.raises(MetadataError, match=r"line 4: image '00000003_000.png' not found.*missing_images: skip"):
        load_metadata(raw)
    metadata = load_metadata(raw, missing_images="skip")
    assert len(metadata.frame) == 3 and metadata.dropped_missing == 1
    assert "dropped 1 metadata row" in caplog.text


def test_missing_column_and_duplicates(tmp_path):
    rows = [("00000001_000.png", "No Finding", "1"), ("00000001_000.png", "Mass", "1")]
    raw = write_nih_folder(tmp_path, rows)
    with pytest.raises(MetadataError, match="'00000001_000.png' appears 2 times"):
        load_metadata(raw)
    csv = raw / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("Patient ID", "Patient"))
    with pytest.raises(MetadataError, match=r"missing required column\(s\) \['Patient ID'\]"):
        load_metadata(raw)


def test_orphan_images_are_counted_or_refused(small_nih):
    import cv2
    import numpy as np

    cv2.imwrite(str(small_nih / "images" / "00000099_000.png"), np.zeros((8, 8), np.uint8))
    assert load_metadata(small_nih).orphan_images == 1
    with pytest.raises(MetadataError, match=r"1 image\(s\) have no row .*'00000099_000.png'.*orphan_images: ignore"):
        load_metadata(small_nih, orphan_images="error")


# ------------------------------------------------------------------ where the images are
def _fetched_nih(tmp_path):
    """An NIH download (official layout, 4 images of 2 patients) fetched into raw/: a manifest."""
    from cxr14.data.nih_layout import detect_layout, index_raw

    rows = [(f"0000000{p}_00{f}.png", "No Finding" if f else "Effusion", str(p)) for p in (1, 2) for f in (0, 1)]
    download = write_nih_folder(tmp_path / "download", rows)
    index_raw(detect_layout(download), tmp_path / "raw")
    return download, tmp_path / "raw"


def test_image_files_lists_a_folder_or_reads_the_manifest(small_nih, tmp_path):
    (small_nih / "images" / "._00000001_000.png").write_bytes(b"macOS resource fork")
    listed = image_files(small_nih)
    assert listed.source == small_nih / "images" and len(listed.paths) == 30 and not listed.recorded
    assert listed.checked_path("00000001_000.png") == str(small_nih / "images" / "00000001_000.png")

    download, raw = _fetched_nih(tmp_path)
    assert sorted(path.name for path in raw.iterdir()) == ["Data_Entry_2017.csv", IMAGES_MANIFEST]
    manifest = image_files(raw)
    assert manifest.source == raw / IMAGES_MANIFEST and len(manifest.paths) == 4
    path = download.resolve() / "images" / "00000002_001.png"
    assert manifest.paths["00000002_001.png"] == str(path)
    assert manifest.recorded["00000002_001.png"] == (path.stat().st_size, path.stat().st_mtime_ns)
    assert manifest.checked_paths(["00000002_001.png"]) == {"00000002_001.png": str(path)}
    metadata = load_metadata(raw)
    assert len(metadata.frame) == 4 and metadata.images == manifest


def test_an_image_changed_since_fetch_names_the_file_and_the_fix(tmp_path):
    import cv2
    import numpy as np

    download, raw = _fetched_nih(tmp_path)
    resized = download / "images" / "00000001_001.png"
    assert cv2.imwrite(str(resized), np.zeros((96, 96), np.uint8))  # other bytes, other size
    images = load_metadata(raw).images  # names only: no stat, so the split still runs
    with pytest.raises(
        ImageChangedError,
        match=r"00000001_001.png: image 00000001_001.png changed since fetch "
        r".*bytes then, .* now.*re-run `dvc repro -f fetch`",
    ):
        images.checked_path("00000001_001.png")

    touched = download / "images" / "00000002_000.png"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # same bytes, new mtime
    with pytest.raises(ImageChangedError, match=r"00000002_000.png changed since fetch .*modified .*recorded"):
        images.checked_paths(["00000002_001.png", "00000002_000.png"])


def test_an_image_missing_since_fetch_names_the_file_and_the_fix(tmp_path):
    download, raw = _fetched_nih(tmp_path)
    (download / "images" / "00000002_000.png").unlink()
    images = image_files(raw)
    missing = download.resolve() / "images" / "00000002_000.png"
    with pytest.raises(ImageChangedError, match=rf"{missing}: image 00000002_000.png is missing.*dvc repro -f fetch"):
        images.checked_path("00000002_000.png")


def test_preprocess_stage_stops_on_a_changed_image(tmp_path):
    import yaml

    from tests.conftest import tiny_params
    from tests.test_cli import run_stage

    download, raw = _fetched_nih(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(tiny_params(**{"split.method": "patient", "data.source": "nih", "data.nih.path": str(download)}))
    )

    def stage(name: str, *args: str):
        return run_stage(f"{name}.py", "--params", str(params), *args, timeout=120)

    done = stage(
        "split", "--raw", str(raw), "--out", str(tmp_path / "splits.csv"), "--summary", str(tmp_path / "split.json")
    )
    assert done.returncode == 0, done.stderr
    (download / "images" / "00000001_000.png").write_bytes(b"\x89PNG\r\n\x1a\n another image")
    done = stage(
        "preprocess", "--raw", str(raw), "--splits", str(tmp_path / "splits.csv"), "--out", str(tmp_path / "cache")
    )
    assert done.returncode == 2
    assert "00000001_000.png changed since fetch" in done.stderr and "dvc repro -f fetch" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "cache").exists()


def test_both_manifest_and_folder_or_neither_is_an_error(small_nih, tmp_path):
    (small_nih / IMAGES_MANIFEST).write_text(",".join(MANIFEST_COLUMNS) + "\n")
    with pytest.raises(MetadataError, match="both images.csv and images/"):
        image_files(small_nih)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetadataError, match=r"no images.csv and no images/ folder; run the fetch stage"):
        image_files(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / IMAGES_MANIFEST).write_text("Image Index,path\na.png,/x/a.png\n")
    with pytest.raises(MetadataError, match=r"missing column\(s\) \['bytes', 'mtime_ns'\]"):
        image_files(tmp_path / "bad")


# ------------------------------------------------------------------ data that can leak (issue 12)
def _with_patient_ids(tmp_path, *patient_ids: str):
    """An NIH folder whose 3rd, 4th ... rows (lines 4, 5 ...) have `patient_ids`, the others 1 and 2."""
    rows = [("00000001_000.png", "Effusion", "1"), ("00000002_000.png", "No Finding", "2")]
    rows += [(f"0000000{3 + i}_000.png", "Mass", patient) for i, patient in enumerate(patient_ids)]
    return write_nih_folder(tmp_path / "raw", rows)


@pytest.mark.parametrize("bad", ["", " ", "abc", "1.0", "0", "-3", "00012", "1e3"])
def test_a_patient_id_that_is_not_a_positive_integer_is_refused(tmp_path, bad):
    raw = _with_patient_ids(tmp_path, "3", bad)
    csv = raw / "Data_Entry_2017.csv"
    with pytest.raises(MetadataError) as refused:
        load_metadata(raw)
    message = str(refused.value)
    assert message.startswith(f"{csv}: 1 row(s) have a Patient ID that is not a positive integer: ")
    assert f"line 5 (00000004_000.png) {bad!r}" in message and "re-download Data_Entry_2017_v2020.csv" in message
    assert "\n" not in message


def test_an_empty_patient_id_cannot_split_a_patient(tmp_path):
    """The bug: patient 1's third image had an empty id, so it went to val while its others went to train."""
    rows = [(f"00000001_00{f}.png", "No Finding", "1") for f in range(3)]
    rows += [(f"0000000{p}_000.png", "Effusion", str(p)) for p in range(2, 9)]
    raw = write_nih_folder(tmp_path / "raw", rows)
    csv = raw / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().replace("00000001_002.png,No Finding,2,1,", "00000001_002.png,No Finding,2,,"))
    with pytest.raises(MetadataError, match=r"1 row\(s\) have a Patient ID .*: line 4 \(00000001_002.png\) ''"):
        load_metadata(raw)


def test_many_bad_patient_ids_are_counted_after_the_first_few(tmp_path):
    raw = _with_patient_ids(tmp_path, "x", "", "0", "3", "1.5")
    with pytest.raises(MetadataError) as refused:
        load_metadata(raw)
    message = str(refused.value)
    assert "4 row(s)" in message and "line 4 (00000003_000.png) 'x'" in message
    assert "line 6 (00000005_000.png) '0'" in message and "and 1 more" in message and "'1.5'" not in message


def test_patient_ids_are_read_as_written_and_blank_lines_keep_line_numbers(tmp_path):
    raw = _with_patient_ids(tmp_path, " 30805 ", "3")
    csv = raw / "Data_Entry_2017.csv"
    lines = csv.read_text().splitlines(keepends=True)
    csv.write_text("".join(lines[:2] + ["\n"] + lines[2:4] + ["00000009_000.png,Flu,0,9,50,M,PA\n"] + lines[4:]))
    with pytest.raises(UnknownFindingError, match=r"line 6 \(00000009_000.png\)"):  # after a blank line
        load_metadata(raw)
    csv.write_text("".join(lines[:2] + ["\n"] + lines[2:] + ["\n"]))
    metadata = load_metadata(raw)
    assert metadata.frame["patient_id"].tolist() == ["1", "2", "30805", "3"]


def test_an_empty_metadata_file_names_the_file_and_the_fix(tmp_path):
    raw = _with_patient_ids(tmp_path)
    csv = raw / "Data_Entry_2017.csv"
    csv.write_bytes(b"")
    with pytest.raises(MetadataError, match=rf"^{csv} is empty \(0 bytes\); re-download Data_Entry_2017_v2020.csv"):
        load_metadata(raw)


def test_a_header_only_metadata_file_is_refused(tmp_path):
    raw = _with_patient_ids(tmp_path)
    csv = raw / "Data_Entry_2017.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    with pytest.raises(MetadataError, match=rf"^{csv}: a header line but no rows; re-download Data_Entry_2017_v2020"):
        load_metadata(raw)


def test_a_latin1_byte_names_the_line_and_offset(tmp_path):
    raw = _with_patient_ids(tmp_path)
    csv = raw / "Data_Entry_2017.csv"
    text = csv.read_text().replace("00000002_000.png,No Finding", "00000002_000.png,No Finding caf\u00e9")
    csv.write_bytes(text.encode("latin-1"))
    offset = text.index("\u00e9")
    with pytest.raises(
        MetadataError,
        match=rf"^{csv} line 3: byte 0xe9 at offset {offset} is not UTF-8; "
        r"save the file as UTF-8, or re-download",
    ):
        load_metadata(raw)


def test_the_manifest_is_read_the_same_way(tmp_path):
    _, raw = _fetched_nih(tmp_path)
    manifest = raw / IMAGES_MANIFEST
    header = manifest.read_text().splitlines()[0]
    for content, refusal in (
        (b"", r"is empty \(0 bytes\)"),
        (f"{header}\n".encode(), "a header line but no rows"),
        (f"{header}\n\xe9.png,/x,1,2\n".encode("latin-1"), "line 2: byte 0xe9 at offset"),
    ):
        manifest.write_bytes(content)
        with pytest.raises(MetadataError, match=rf"^{manifest}:? {refusal}.*re-run it \(dvc repro -f fetch\)"):
            image_files(raw)


@pytest.mark.parametrize("case", ["patient_id", "empty", "latin1"])
def test_split_stage_stops_on_bad_metadata_with_one_line(tmp_path, case):

    import yaml

    from tests.conftest import tiny_params
    from tests.test_cli import run_stage

    raw = _with_patient_ids(tmp_path, "3", "abc")
    csv = raw / "Data_Entry_2017.csv"
    if case == "empty":
        csv.write_bytes(b"")
    elif case == "latin1":
        csv.write_bytes(csv.read_bytes().replace(b"No Finding", b"No Finding \xe9"))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params()))
    done = run_stage(
        "split.py",
        "--params",
        str(params),
        "--raw",
        str(raw),
        "--out",
        str(tmp_path / "splits.csv"),
        "--summary",
        str(tmp_path / "split.json"),
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    expected = {
        "patient_id": "line 5 (00000004_000.png) 'abc'",
        "empty": "is empty (0 bytes)",
        "latin1": "line 3: byte 0xe9",
    }[case]
    assert len(errors) == 1 and errors[0].startswith(f"error: {csv}") and expected in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "splits.csv").exists()


# ------------------------------------------------------------------ subgroup attributes (issue 14)
def _with_attributes(tmp_path, ages, sexes, views=None, follow_ups=None):
    """An NIH folder of one image per patient whose Patient Age / Gender (... ) cells are the given strings."""
    rows = [(f"{p:08d}_000.png", "No Finding", str(p)) for p in range(1, len(ages) + 1)]
    raw = write_nih_folder(tmp_path / "raw", rows)
    csv = raw / "Data_Entry_2017.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    frame["Patient Age"], frame["Patient Gender"] = ages, sexes
    if views is not None:
        frame["View Position"] = views
    if follow_ups is not None:
        frame["Follow-up #"] = follow_ups
    frame.to_csv(csv, index=False)
    return raw


def test_ages_that_are_not_plain_integers_are_unknown_counted_and_named(tmp_path, caplog):
    ages = ["58", "058Y", "", "-3", "abc", "058", "121", " 7 "]
    raw = _with_attributes(tmp_path, ages, ["M"] * len(ages))
    caplog.set_level("WARNING")
    metadata = load_metadata(raw)
    assert metadata.frame["age"].tolist() == [58, pd.NA, pd.NA, pd.NA, pd.NA, 58, pd.NA, 7]
    assert str(metadata.frame["age"].dtype) == "Int64"
    assert metadata.unknown_attributes == {"age": 5, "sex": 0, "view": 0, "follow_up": 0}
    warnings = [record.getMessage() for record in caplog.records if "Patient Age" in record.getMessage()]
    assert len(warnings) == 1, caplog.text
    csv = raw / "Data_Entry_2017.csv"
    assert warnings[0].startswith(f"{csv}: 5 row(s) have a 'Patient Age' that is not a plain integer number of years")
    assert "line 3 '058Y', line 4 '', line 5 '-3' and 2 more" in warnings[0] and "age is unknown" in warnings[0]


def test_sex_view_and_follow_up_are_parsed_or_unknown(tmp_path, caplog):
    raw = _with_attributes(
        tmp_path,
        ["40"] * 5,
        ["M", "f", "", "X", "F"],
        views=["PA", "ap", "", "LL", "PA"],
        follow_ups=["0", "3", "", "x", "12"],
    )
    caplog.set_level("WARNING")
    frame = load_metadata(raw).frame
    assert frame["sex"].tolist() == ["M", "F", "unknown", "unknown", "F"]
    assert frame["view"].tolist() == ["PA", "AP", "unknown", "LL", "PA"]  # another view is kept as written
    assert frame["follow_up"].tolist() == [0, 3, pd.NA, pd.NA, 12]
    assert "'Patient Gender' that is not M or F: line 4 '', line 5 'X'" in caplog.text
    assert "'View Position' that is not a view such as PA or AP: line 4 ''" in caplog.text
    assert "'Follow-up #' that is not a non-negative integer" in caplog.text and "line 5 'x'" in caplog.text


def test_required_columns_only_make_every_attribute_unknown(tmp_path, caplog):
    raw = write_nih_folder(tmp_path / "raw", [("00000001_000.png", "Mass", "1"), ("00000002_000.png", "Mass", "2")])
    csv = raw / "Data_Entry_2017.csv"
    pd.read_csv(csv, dtype=str)[["Image Index", "Finding Labels", "Patient ID"]].to_csv(csv, index=False)
    caplog.set_level("WARNING")
    metadata = load_metadata(raw)
    assert metadata.unknown_attributes == {"age": 2, "sex": 2, "view": 2, "follow_up": 2}
    assert metadata.frame["sex"].tolist() == ["unknown", "unknown"] and metadata.frame["age"].isna().all()
    assert f"{csv}: no 'Patient Age' column; age is unknown for all 2 rows" in caplog.text
