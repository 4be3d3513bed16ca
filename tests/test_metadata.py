import pytest

from cxr14.data.metadata import MetadataError, load_metadata
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
