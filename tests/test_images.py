"""Reading new radiographs (cxr14.data.images): real PNG, JPEG and DICOM files written here.

DICOM files are built with pydicom (Dataset + FileMetaDataset, saved as a DICOM file with its
preamble); the compressed ones are encoded by pydicom's own encoders (RLE, JPEG 2000 through
pylibjpeg-openjpeg) or, for JPEG baseline, wrap a JPEG that OpenCV encoded. Phantom images come
from the real generator at the training resolution (1024 px).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import (
    HEVCMP51,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from cxr14.data.cache import decode_and_resize, open_split
from cxr14.data.images import (
    LOW_INTENSITY_SPREAD,
    Radiograph,
    UnreadableImageError,
    UnsupportedImageError,
    check_radiograph,
    find_images,
    intensity_spread,
    prepare_for_model,
    read_radiograph,
)
from cxr14.data.phantom import generate_phantom
from cxr14.errors import Cxr14Error
from tests.conftest import cache_of

DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory) -> Path:
    """A real phantom data set at the training resolution (1024 px, ~10 images)."""
    out = tmp_path_factory.mktemp("phantom")
    generate_phantom(out, n_patients=4, image_size=1024, seed=7, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def phantom_pixels(phantom_dir) -> np.ndarray:
    return cv2.imread(str(sorted((phantom_dir / "images").glob("*.png"))[0]), cv2.IMREAD_UNCHANGED)


def write_dicom(path: Path, stored: np.ndarray, photometric: str = "MONOCHROME2", **attributes) -> Path:
    """A single-frame grayscale DX DICOM file of `stored` (uint8/uint16/int16) with `attributes`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = DX_IMAGE_STORAGE, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = attributes.pop("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(stored.dtype.kind == "i")
    compress = attributes.pop("compress", None)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.PixelData = stored.tobytes()
    if compress is not None:
        ds.compress(compress)
    ds.save_as(path, enforce_file_format=True)
    return path


def pattern12(shape=(300, 260)) -> np.ndarray:
    """A 12-bit test pattern using 200..3900: a diagonal ramp plus a block."""
    rows, cols = np.indices(shape)
    values = 200 + (rows * 7 + cols * 5) % 3701
    values[40:80, 40:120] = 3900
    return values.astype(np.uint16)


# ----------------------------------------------------------------------------------- PNG and JPEG
def test_png_8_bit_is_read_as_stored_and_equals_the_cache_conversion(tmp_path, phantom_pixels):
    path = tmp_path / "a.png"
    assert cv2.imwrite(str(path), phantom_pixels)
    radiograph = read_radiograph(path)
    assert radiograph.kind == "png" and radiograph.notes == [] and radiograph.view is None
    assert radiograph.original_dtype == "uint8" and radiograph.original_shape == (1024, 1024)
    assert np.array_equal(radiograph.pixels, phantom_pixels)
    pixels, _ = prepare_for_model(path, 224)
    assert np.array_equal(pixels, decode_and_resize(path, 224))
    assert np.array_equal(pixels, cv2.resize(phantom_pixels, (224, 224), interpolation=cv2.INTER_AREA))


def test_png_16_bit_keeps_the_high_byte(tmp_path):
    deep = (np.arange(256 * 256, dtype=np.uint32).reshape(256, 256)).astype(np.uint16)
    path = tmp_path / "deep.png"
    assert cv2.imwrite(str(path), deep)
    radiograph = read_radiograph(path)
    assert radiograph.original_dtype == "uint16" and any("16-bit scaled to 8-bit" in n for n in radiograph.notes)
    assert np.array_equal(radiograph.pixels, (deep >> 8).astype(np.uint8))


def test_gray_saved_as_rgb_png_is_converted_and_not_refused(tmp_path, phantom_pixels):
    path = tmp_path / "rgb.png"
    assert cv2.imwrite(str(path), np.dstack([phantom_pixels] * 3))
    radiograph = read_radiograph(path)
    assert radiograph.notes == ["RGB converted to gray"] and radiograph.original_shape == (1024, 1024, 3)
    assert np.array_equal(radiograph.pixels, phantom_pixels) and radiograph.colourfulness == 0
    assert check_radiograph(radiograph) == ([], [])


def test_jpeg_is_read_like_opencv_reads_it(tmp_path, phantom_pixels):
    path = tmp_path / "scan.JPG"
    assert cv2.imwrite(str(path), phantom_pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    radiograph = read_radiograph(path)
    assert radiograph.kind == "jpeg"
    assert np.array_equal(radiograph.pixels, cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
    assert np.abs(radiograph.pixels.astype(int) - phantom_pixels).mean() < 2  # lossy, but the same image


def test_colour_photograph_is_refused_as_not_grayscale(tmp_path):
    rows, cols = np.indices((400, 400))
    photo = np.dstack([(rows * 255 // 399), (cols * 255 // 399), ((rows + cols) * 255 // 798)]).astype(np.uint8)
    path = tmp_path / "photo.png"
    assert cv2.imwrite(str(path), photo)
    problems, _ = check_radiograph(read_radiograph(path))
    assert any("not a grayscale radiograph" in problem for problem in problems), problems


def test_truncated_or_corrupt_files_raise_unreadable_naming_the_file(tmp_path, phantom_pixels):
    ok, png = cv2.imencode(".png", phantom_pixels)
    ok2, jpeg = cv2.imencode(".jpg", phantom_pixels)
    assert ok and ok2
    files = {
        "cut.png": png.tobytes()[: len(png) // 2],
        "cut.jpg": jpeg.tobytes()[: len(jpeg) // 2],  # OpenCV alone would decode it with grey rows
        "text.png": b"this is not a picture at all",
        "junk.dcm": b"\x00" * 40 + b"not DICOM either" * 10,
    }
    for name, payload in files.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(UnreadableImageError, match=name) as caught:
            read_radiograph(tmp_path / name)
        assert isinstance(caught.value, Cxr14Error) and isinstance(caught.value, ValueError)


def test_unsupported_file_and_missing_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UnsupportedImageError, match="notes.txt"):
        read_radiograph(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="absent.png"):
        read_radiograph(tmp_path / "absent.png")


# ------------------------------------------------------------------------------------------ DICOM
def test_dicom_8_bit_monochrome2_is_kept_as_stored(tmp_path, phantom_pixels):
    path = write_dicom(tmp_path / "a.dcm", phantom_pixels, ViewPosition="PA")
    radiograph = read_radiograph(path)
    assert radiograph.kind == "dicom" and radiograph.view == "PA" and radiograph.modality == "DX"
    assert radiograph.notes == [] and radiograph.original_dtype == "uint8"
    assert np.array_equal(radiograph.pixels, phantom_pixels)
    assert check_radiograph(radiograph) == ([], [])


def test_dicom_12_bit_without_window_maps_its_min_max_to_0_255(tmp_path):
    stored = pattern12()
    radiograph = read_radiograph(write_dicom(tmp_path / "a.dcm", stored, BitsStored=12))
    expected = np.rint((stored.astype(float) - 200) * 255 / 3700).astype(np.uint8)
    assert np.array_equal(radiograph.pixels, expected)
    assert radiograph.pixels.min() == 0 and radiograph.pixels.max() == 255
    assert any(note.startswith("12-bit scaled to 8-bit") for note in radiograph.notes), radiograph.notes


def test_monochrome1_is_the_inverse_of_monochrome2(tmp_path):
    stored = pattern12()
    mono2 = read_radiograph(write_dicom(tmp_path / "m2.dcm", stored, BitsStored=12))
    mono1 = read_radiograph(write_dicom(tmp_path / "m1.dcm", stored, "MONOCHROME1", BitsStored=12))
    assert np.array_equal(mono1.pixels, 255 - mono2.pixels)
    assert "MONOCHROME1 inverted" in mono1.notes and "MONOCHROME1 inverted" not in mono2.notes
    # with a window too: inverted after the window, so the pair still mirrors exactly
    window = {"BitsStored": 12, "WindowCenter": 2000, "WindowWidth": 1000}
    mono2 = read_radiograph(write_dicom(tmp_path / "w2.dcm", stored, **window))
    mono1 = read_radiograph(write_dicom(tmp_path / "w1.dcm", stored, "MONOCHROME1", **window))
    assert np.array_equal(mono1.pixels, 255 - mono2.pixels)


def test_rescale_then_window_maps_the_window_onto_0_255(tmp_path):
    stored = pattern12()
    path = write_dicom(
        tmp_path / "w.dcm",
        stored,
        BitsStored=12,
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=3000,
        WindowWidth=2001,
    )
    radiograph = read_radiograph(path)
    values = stored.astype(float) * 2 - 1000  # the modality LUT's output
    # DICOM PS3.3 C.11.2.1.2 (LINEAR): (x - (c - 0.5)) / (w - 1) + 0.5, clipped to 0..1
    expected = np.rint(np.clip((values - 2999.5) / 2000 + 0.5, 0, 1) * 255)
    assert np.abs(radiograph.pixels.astype(float) - expected).max() <= 1
    assert np.all(radiograph.pixels[values <= 2000] == 0) and np.all(radiograph.pixels[values > 4000] == 255)
    assert "window 3000/2001 applied" in radiograph.notes
    assert "rescale slope 2 intercept -1000 applied" in radiograph.notes
    # A window wider than the data keeps its (low) contrast: the data are not stretched to 0..255.
    wide = {"BitsStored": 12, "RescaleSlope": 2, "RescaleIntercept": -1000, "WindowCenter": 3000, "WindowWidth": 20001}
    radiograph = read_radiograph(write_dicom(tmp_path / "wide.dcm", stored, **wide))
    expected = np.rint(np.clip((values - 2999.5) / 20000 + 0.5, 0, 1) * 255)
    assert np.abs(radiograph.pixels.astype(float) - expected).max() <= 1
    assert (radiograph.pixels.min(), radiograph.pixels.max()) == (82, 176)  # (-600, 6800) through the window


def test_an_invalid_window_is_unreadable_naming_the_file(tmp_path):
    path = write_dicom(tmp_path / "bad.dcm", pattern12(), BitsStored=12, WindowCenter=2000, WindowWidth=0)
    with pytest.raises(UnreadableImageError, match=r"bad\.dcm.*Window Width"):
        read_radiograph(path)


def test_voi_lut_sequence_is_applied_over_its_own_entry_range(tmp_path):
    stored = (np.arange(200 * 200).reshape(200, 200) % 1024).astype(np.uint16)
    item = Dataset()
    item.add_new(0x00283002, "US", [1024, 0, 16])  # LUT Descriptor: 1024 entries from 0, "16 bits"
    entries = (np.sqrt(np.arange(1024) / 1023) * 4095).astype(np.uint16)  # 12-bit entries
    item.add_new(0x00283006, "US", entries.tolist())  # LUT Data
    ds_path = write_dicom(tmp_path / "lut.dcm", stored, BitsStored=10, VOILUTSequence=[item])
    radiograph = read_radiograph(ds_path)
    expected = np.rint(entries[stored].astype(float) * 255 / 4095).astype(np.uint8)
    assert np.array_equal(radiograph.pixels, expected)
    assert "VOI LUT applied" in radiograph.notes


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_losslessly_compressed_dicom_decodes_to_the_same_pixels(tmp_path, syntax):
    stored = pattern12()
    plain = read_radiograph(write_dicom(tmp_path / "plain.dcm", stored, BitsStored=12))
    packed_path = write_dicom(tmp_path / "packed.dcm", stored, BitsStored=12, compress=syntax)
    assert pydicom.dcmread(packed_path).file_meta.TransferSyntaxUID == syntax
    packed = read_radiograph(packed_path)
    assert np.array_equal(packed.pixels, plain.pixels)


def test_jpeg_baseline_dicom_decodes_through_the_plugins(tmp_path, phantom_pixels):
    ok, jpeg = cv2.imencode(".jpg", phantom_pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
    path = write_dicom(tmp_path / "plain.dcm", phantom_pixels)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.save_as(tmp_path / "jpeg.dcm", enforce_file_format=True)
    radiograph = read_radiograph(tmp_path / "jpeg.dcm")
    reference = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
    assert np.abs(radiograph.pixels.astype(int) - reference).max() <= 2  # libjpeg builds may round apart


def _undecodable(tmp_path: Path, name: str, syntax: str) -> Path:
    """A DICOM file whose pixel data claim `syntax` (encapsulated junk): nothing installed decodes it."""
    path = write_dicom(tmp_path / "plain.dcm", np.zeros((64, 64), np.uint8))
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\x00\x01" * 100])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = HEVCMP51
    ds.save_as(tmp_path / name, enforce_file_format=True)
    if syntax != HEVCMP51:  # pydicom 3.0 will not write a syntax it does not know: patch the same-length UID
        payload = (tmp_path / name).read_bytes()
        assert len(syntax) == len(HEVCMP51) and payload.count(HEVCMP51.encode()) == 1
        (tmp_path / name).write_bytes(payload.replace(HEVCMP51.encode(), syntax.encode()))
    return tmp_path / name


@pytest.mark.parametrize(
    ("syntax", "name"),
    [(HEVCMP51, "HEVC/H.265 Main Profile"), ("1.2.840.10008.1.2.4.110", "JPEG XL Lossless")],
    ids=["hevc", "jpeg-xl"],
)
def test_a_syntax_nothing_decodes_is_refused_naming_file_syntax_and_uid(tmp_path, syntax, name):
    path = _undecodable(tmp_path, "video.dcm", syntax)
    with pytest.raises(UnsupportedImageError) as caught:
        read_radiograph(path)
    message = str(caught.value)
    assert "video.dcm" in message and name in message and syntax in message, message
    assert "pydicom 3" in message and "no decoder" in message and "uncompressed" in message


def test_truncated_dicom_is_unreadable(tmp_path):
    path = write_dicom(tmp_path / "full.dcm", pattern12(), BitsStored=12)
    payload = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(payload[: len(payload) - 5000])
    with pytest.raises(UnreadableImageError, match="cut.dcm"):
        read_radiograph(tmp_path / "cut.dcm")


def test_corrupt_compressed_pixel_data_is_unreadable_naming_the_syntax(tmp_path):
    path = write_dicom(tmp_path / "rle.dcm", pattern12(), BitsStored=12, compress=RLELossless)
    ds = pydicom.dcmread(path)
    fragment = next(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([fragment[: len(fragment) // 3]])
    ds.save_as(tmp_path / "cut_rle.dcm", enforce_file_format=True)
    with pytest.raises(UnreadableImageError, match=r"cut_rle\.dcm.*RLE Lossless"):
        read_radiograph(tmp_path / "cut_rle.dcm")


def test_dicom_without_pixels_colour_or_frames_is_refused(tmp_path):
    path = write_dicom(tmp_path / "a.dcm", np.zeros((32, 32), np.uint8))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "empty.dcm", enforce_file_format=True)
    with pytest.raises(UnsupportedImageError, match=r"empty\.dcm.*no image"):
        read_radiograph(tmp_path / "empty.dcm")
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.PixelData = np.zeros((2, 32, 32), np.uint8).tobytes()
    ds.save_as(tmp_path / "frames.dcm", enforce_file_format=True)
    with pytest.raises(UnsupportedImageError, match=r"frames\.dcm.*2 frames"):
        read_radiograph(tmp_path / "frames.dcm")
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = np.zeros((32, 32, 3), np.uint8).tobytes()
    ds.save_as(tmp_path / "colour.dcm", enforce_file_format=True)
    with pytest.raises(UnsupportedImageError, match=r"colour\.dcm.*not grayscale \(Photometric Interpretation RGB"):
        read_radiograph(tmp_path / "colour.dcm")


def test_dicom_is_recognised_by_content_without_a_suffix(tmp_path, phantom_pixels):
    path = write_dicom(tmp_path / "1.2.826.0.1.3680043.1", phantom_pixels)  # UID-named, suffix ".1"
    plain = tmp_path / "IMG0001"
    plain.write_bytes(path.read_bytes())
    assert np.array_equal(read_radiograph(plain).pixels, phantom_pixels)
    assert find_images([path, plain]) == ([path, plain], [])


# ------------------------------------------------------------------------------------------ checks
def test_phantom_images_pass_every_check(phantom_dir):
    paths = sorted((phantom_dir / "images").glob("*.png"))
    assert len(paths) >= 5
    for path in paths:
        radiograph = read_radiograph(path)
        assert check_radiograph(radiograph) == ([], []), path
        assert intensity_spread(radiograph.pixels) > LOW_INTENSITY_SPREAD


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "RAO"])
def test_lateral_or_oblique_view_is_refused(tmp_path, phantom_pixels, view):
    radiograph = read_radiograph(write_dicom(tmp_path / "v.dcm", phantom_pixels, ViewPosition=view))
    problems, warnings = check_radiograph(radiograph)
    assert len(problems) == 1 and "PA/AP" in problems[0] and view in problems[0], problems
    assert warnings == []


def test_other_views_and_modalities(tmp_path, phantom_pixels):
    for name, attributes in {"ap": {"ViewPosition": "AP"}, "unset": {}}.items():
        radiograph = read_radiograph(write_dicom(tmp_path / f"{name}.dcm", phantom_pixels, **attributes))
        assert check_radiograph(radiograph) == ([], []), name
    decubitus = read_radiograph(write_dicom(tmp_path / "d.dcm", phantom_pixels, ViewPosition="LLD"))
    assert check_radiograph(decubitus)[0] == [] and "LLD" in check_radiograph(decubitus)[1][0]
    ct = read_radiograph(write_dicom(tmp_path / "ct.dcm", phantom_pixels, Modality="CT"))
    assert "Modality CT" in check_radiograph(ct)[0][0]


def test_constant_image_is_refused_and_faded_one_warned(tmp_path, phantom_pixels):
    flat = np.full((512, 512), 120, np.uint8) + np.random.default_rng(0).integers(0, 3, (512, 512), dtype=np.uint8)
    problems, _ = check_radiograph(Radiograph(tmp_path / "flat.png", flat, "png", "uint8", flat.shape))
    assert len(problems) == 1 and "almost constant" in problems[0]
    faded = (100 + phantom_pixels.astype(np.uint16) * 60 // 255).astype(np.uint8)
    problems, warnings = check_radiograph(Radiograph(tmp_path / "f.png", faded, "png", "uint8", faded.shape))
    assert problems == [] and len(warnings) == 1 and "low contrast" in warnings[0]


def test_12_bit_data_in_a_16_bit_png_is_refused_with_the_reason(tmp_path, phantom_pixels):
    path = tmp_path / "twelve.png"
    assert cv2.imwrite(str(path), phantom_pixels.astype(np.uint16) * 16)  # values 0..4080 of 65535
    problems, _ = check_radiograph(read_radiograph(path))
    assert len(problems) == 1 and "almost constant" in problems[0] and "12-bit" in problems[0]


def test_aspect_and_size_are_warned_not_refused(tmp_path, phantom_pixels):
    wide = phantom_pixels[300:700, :]  # 1024 x 400: width/height 2.56
    problems, warnings = check_radiograph(Radiograph(tmp_path / "w.png", wide, "png", "uint8", wide.shape))
    assert problems == [] and len(warnings) == 1 and "aspect ratio 1024x400" in warnings[0]
    small = cv2.resize(phantom_pixels, (128, 128), interpolation=cv2.INTER_AREA)
    problems, warnings = check_radiograph(Radiograph(tmp_path / "s.png", small, "png", "uint8", small.shape))
    assert problems == [] and len(warnings) == 1 and "small image (128x128)" in warnings[0]
    assert check_radiograph(Radiograph(tmp_path / "s.png", small, "png", "uint8", small.shape), min_side=64) == (
        [],
        [],
    )


# ------------------------------------------------------------------------------- finding and cache
def test_find_images_expands_folders_recursively_in_a_fixed_order(tmp_path, phantom_pixels):
    folder = tmp_path / "scans"
    (folder / "b" / "deep").mkdir(parents=True)
    (folder / "empty").mkdir()
    cv2.imwrite(str(folder / "z.png"), phantom_pixels)
    cv2.imwrite(str(folder / "b" / "a.JPEG"), phantom_pixels)
    write_dicom(folder / "b" / "deep" / "c.dcm", phantom_pixels)
    write_dicom(folder / "b" / "IMG0001", phantom_pixels)  # DICOM without a suffix
    (folder / "b" / "notes.txt").write_text("skipped silently")
    (folder / "._z.png").write_bytes(b"macOS resource fork, not an image")
    (folder / "b" / "DICOMDIR").write_bytes((folder / "b" / "IMG0001").read_bytes())
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4")
    images, problems = find_images(
        [folder, folder / "z.png", tmp_path / "report.pdf", folder / "empty", tmp_path / "missing"]
    )
    assert images == [
        folder / "b" / "IMG0001",
        folder / "b" / "a.JPEG",
        folder / "b" / "deep" / "c.dcm",
        folder / "z.png",
    ]
    assert [(path.name, message.split(" ")[0]) for path, message in problems] == [
        ("report.pdf", "not"),
        ("empty", "no"),
        ("missing", "no"),
    ]
    assert "no image in this folder" in problems[1][1]
    assert find_images([folder]) == find_images([folder])  # deterministic


def test_prepare_for_model_gives_the_cache_row_of_a_phantom_png(phantom_dir, tmp_path):
    cache = cache_of(phantom_dir, tmp_path / "cache", size=64)
    compared = 0
    for split in ("train", "val", "test"):
        images, index = open_split(cache, split)
        for row, image_id in enumerate(index["image_id"]):
            pixels, radiograph = prepare_for_model(phantom_dir / "images" / image_id, 64)
            assert np.array_equal(pixels, images[row]), image_id
            assert radiograph.pixels.shape == (1024, 1024)
            compared += 1
    assert compared >= 5
