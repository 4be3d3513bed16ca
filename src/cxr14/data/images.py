"""Read new radiographs (PNG, JPEG, DICOM) exactly as the cache reads its PNGs, and flag the odd ones.

    files, problems = find_images([Path("scans"), Path("one.dcm")])   # [(path, why), ...] not raised
    radiograph = read_radiograph(files[0])       # 8-bit gray, full resolution, + what was converted
    refused, warnings = check_radiograph(radiograph)                  # unlike the training images?
    pixels, radiograph = prepare_for_model(files[0], size=224)        # what the cache would hold

One implementation of the PNG conversion serves the cache (cxr14.data.cache) and prediction:
:func:`read_bitmap` decodes with OpenCV as stored (``IMREAD_UNCHANGED``), :func:`to_gray8` makes
BGR(A) gray (``cv2.cvtColor``) and 16-bit 8-bit (the high byte, ``value >> 8``) and refuses any
other pixel type, :func:`resize_area` resizes with area interpolation. So a PNG handed to
:func:`prepare_for_model` gives the very bytes the cache holds for it. JPEG goes the same way.

DICOM (pydicom 3; pylibjpeg with its libjpeg/openjpeg plugins decodes JPEG, JPEG-LS and JPEG 2000)
becomes 8-bit gray in the order of the DICOM grayscale pipeline (:func:`dicom_to_gray8`):
Modality LUT (rescale slope/intercept), VOI LUT or window, to 8 bits, MONOCHROME1 inverted.
Single-frame grayscale images only: a colour or multi-frame DICOM is refused rather than guessed
at (which frame? a colour DICOM is a screenshot or photo, not a radiograph).

:func:`check_radiograph` compares an image with what the models were trained on (NIH's frontal,
square, 8-bit grayscale radiographs using most of 0..255) and returns what refuses it and what
only deserves a warning; the thresholds are the module constants below, each with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from cxr14.errors import Cxr14Error, MissingInputError

if TYPE_CHECKING:  # pydicom is imported where a DICOM is read: the cache (every stage) never needs it
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")  # compared case-insensitively
DICOM_MAGIC = b"DICM"  # PS3.10: a DICOM file has a 128-byte preamble, then these four bytes
DICOM_MAGIC_OFFSET = 128
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_END = b"\xff\xd9"  # EOI marker; libjpeg decodes a truncated file anyway (grey rows + a warning)

# check_radiograph thresholds.
# ViewPosition values that are not frontal: the models only saw PA and AP views (NIH's two views).
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL", "LATERAL LEFT"})
OBLIQUE_VIEWS = frozenset({"RAO", "LAO", "RPO", "LPO", "RLO", "LLO", "OBLIQUE"})
FRONTAL_VIEWS = frozenset({"PA", "AP"})
# Modalities whose images are not projection radiographs at all (refused). CR/DX (and RG, OT
# for converted images) are fine; any other value only warns.
NON_RADIOGRAPH_MODALITIES = frozenset(
    {"CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "PX", "IO", "OP", "SM", "ES", "OCT", "SR", "ECG"}
)
RADIOGRAPH_MODALITIES = frozenset({"CR", "DX", "RG", "OT"})
# width / height outside these bounds warns. NIH images are 1024 x 1024; detector plates are
# 35 x 43 cm (0.81), 43 x 35 cm (1.23) or 43 x 43 cm, all well inside; beyond ~3:5 the image is
# more likely a crop, a stitched long-leg/spine image or a screenshot, and the square resize of
# the cache squeezes its anatomy far more than anything the models saw.
ASPECT_RANGE = (0.6, 1.67)
# A shorter side below this warns: the cache upsamples it to the model's input (224 px by
# default), and a radiograph this small has lost the fine detail (nodules, lines) the model uses.
MIN_SIDE = 224
# Intensity, on the final 8-bit pixels: the spread between the 1st and 99th percentile. Phantom
# and NIH images spread over ~160-250 grey levels. Below 16 levels there is no radiograph to read
# (a blank, failed exposure, or 12-bit data in a 16-bit PNG that keeps only its high byte):
# refused. Below 96 (well under half the scale) the image is faded or wrongly windowed: warned.
# (torchxrayvision likewise checks the value range of what it is given.)
MIN_INTENSITY_SPREAD = 16
LOW_INTENSITY_SPREAD = 96
# Colourfulness: mean over pixels of (largest - smallest colour channel), in 8-bit grey levels,
# before the gray conversion. A grayscale image saved as RGB has 0 (JPEG chroma noise: ~1); a
# tinted scan or a photo of a film a few; a colour photograph or screenshot tens.
COLOUR_REFUSED = 12.0
COLOUR_WARNED = 3.0

Kind = Literal["png", "jpeg", "dicom"]


class ImageDecodeError(Cxr14Error, ValueError):
    """An image that cannot be used (the base of the two errors below; the cache raises it)."""


class UnreadableImageError(ImageDecodeError):
    """A file that cannot be decoded: corrupt, truncated, or not an image at all."""


class UnsupportedImageError(ImageDecodeError):
    """A valid file that cxr14 does not read: a pixel type, a DICOM transfer syntax, colour, frames."""


@dataclass
class Radiograph:
    """One image as read by :func:`read_radiograph`.

    Attributes:
        path: the file.
        pixels: 2-D uint8 gray at full resolution, after every conversion (the notes).
        kind: "png", "jpeg" or "dicom" (from the file's content, not its suffix).
        original_dtype: the stored pixel type ("uint8", "uint16", "int16", ...).
        original_shape: the stored array's shape (rows, columns[, channels]).
        notes: the conversions applied, e.g. "MONOCHROME1 inverted", "window 40/400 applied".
        view: DICOM ViewPosition (upper case) when the file has one, else None.
        modality: DICOM Modality when the file has one, else None.
        colourfulness: mean channel spread in grey levels before the gray conversion (0 for gray).
    """

    path: Path
    pixels: np.ndarray
    kind: Kind
    original_dtype: str
    original_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)
    view: str | None = None
    modality: str | None = None
    colourfulness: float = 0.0


# --------------------------------------------------------------------------------------- finding
def is_image_file(path: Path) -> bool:
    """True for a supported suffix, or a DICOM file by content (UID-named or suffix-less files)."""
    return path.suffix.lower() in SUPPORTED_SUFFIXES or _has_dicom_magic(path)


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except OSError:
        return False
    return head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC


def _images_in_folder(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted by path; hidden files/folders and DICOMDIR skipped."""
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            path = Path(root) / name
            if not name.startswith(".") and name.upper() != "DICOMDIR" and is_image_file(path):
                found.append(path)
    return sorted(found)  # by path components: a/b/c.png before a/c.png, the same on every file system


def find_images(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files and folders into image files: (images, problems).

    Folders are searched recursively in sorted order, so the same tree always gives the same
    list; in them, files that are not images (other suffixes, hidden files such as macOS `._x.png`,
    DICOMDIR indexes) are skipped silently. A problem (path, message) is returned rather than
    raised for a path that does not exist, a file given by name that is not a supported image, and
    a folder holding no image at all. A file reached twice is listed once, at its first place.
    """
    images: list[Path] = []
    problems: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            inside = _images_in_folder(path)
            if not inside:
                problems.append(
                    (path, f"no image in this folder (looked recursively for {_suffix_list()} and DICOM files)")
                )
        elif path.is_file():
            inside = [path] if is_image_file(path) else []
            if not inside:
                problems.append((path, f"not a supported image: expected {_suffix_list()} or a DICOM file"))
        else:
            problems.append((path, "no such file or folder"))
            continue
        for image in inside:
            key = image.resolve()
            if key not in seen:
                seen.add(key)
                images.append(image)
    return images, problems


def _suffix_list() -> str:
    return ", ".join(SUPPORTED_SUFFIXES)


# --------------------------------------------------------------------------- PNG/JPEG (the cache's)
def read_bitmap(path: Path) -> np.ndarray:
    """Decode a PNG or JPEG as stored (cv2.IMREAD_UNCHANGED): 2-D gray or 3-D BGR(A), 8 or 16 bit."""
    image: np.ndarray | None = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UnreadableImageError(
            f"{path}: cannot decode image (corrupt, truncated, or not a PNG/JPEG); copy the file again "
            "from its source or export it again"
        )
    return image


def to_gray8(image: np.ndarray, path: Path) -> tuple[np.ndarray, bool]:
    """(2-D uint8 image, converted): the cache's conversion of a decoded PNG/JPEG.

    BGR and BGRA become gray with cv2.cvtColor (alpha ignored); 16-bit keeps its high byte
    (``value >> 8``, as for NIH's few 16-bit PNGs); `converted` says whether either happened.
    Other pixel types, and channel counts other than 1, 3 and 4, raise UnsupportedImageError.
    """
    converted = image.ndim == 3 or image.dtype != np.uint8
    if image.ndim == 3:
        if image.shape[2] not in (3, 4):
            raise UnsupportedImageError(
                f"{path}: {image.shape[2]} colour channels; save it as 8-bit grayscale (or RGB) PNG"
            )
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype == np.uint16:
        image = np.right_shift(image, 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise UnsupportedImageError(
            f"{path}: unsupported pixel type {image.dtype}; save it as an 8- or 16-bit grayscale PNG"
        )
    return image, converted


def resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """`image` resized to size x size with area interpolation (unchanged when already that size)."""
    if image.shape != (size, size):
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return image


def _colourfulness(image: np.ndarray) -> float:
    """Mean (largest - smallest of B, G, R) in 8-bit grey levels; 0 for a 2-D image."""
    if image.ndim != 3 or image.shape[2] < 3:
        return 0.0
    colours = image[..., :3]
    spread = colours.max(axis=2).astype(np.float64) - colours.min(axis=2)
    scale = 255.0 / np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 255.0
    return float(spread.mean() * scale)


def _check_jpeg_complete(path: Path) -> None:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 64))
        tail = handle.read().rstrip(b"\x00\r\n\t ")
    if not tail.endswith(_JPEG_END):
        raise UnreadableImageError(
            f"{path}: the JPEG stops before its end-of-image marker (a truncated file); copy it again from its source"
        )


def _read_bitmap_radiograph(path: Path, kind: Kind) -> Radiograph:
    if kind == "jpeg":
        _check_jpeg_complete(path)
    image = read_bitmap(path)
    pixels, _ = to_gray8(image, path)
    notes = []
    if image.ndim == 3:
        notes.append("RGBA converted to gray (alpha ignored)" if image.shape[2] == 4 else "RGB converted to gray")
    if image.dtype == np.uint16:
        notes.append("16-bit scaled to 8-bit (high byte kept)")
    return Radiograph(
        path=path,
        pixels=pixels,
        kind=kind,
        original_dtype=str(image.dtype),
        original_shape=tuple(image.shape),
        notes=notes,
        colourfulness=_colourfulness(image),
    )


# ------------------------------------------------------------------------------------------ DICOM
def _open_dicom(path: Path, has_magic: bool) -> Dataset:
    """The dataset of `path`; a file without the DICM preamble is read as a bare dataset (force)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=not has_magic)
    except Exception as error:  # pydicom raises many types for a damaged file; all mean the same here
        raise UnreadableImageError(
            f"{path}: not a readable DICOM file ({type(error).__name__}: {error}); copy it again from its "
            "source or export it again from the PACS"
        ) from None
    if not has_magic and "PixelData" not in ds:  # forced reading turns any bytes into some dataset
        raise UnreadableImageError(
            f"{path}: not a DICOM file (no DICM preamble and no image in it); the file is damaged or misnamed: "
            "copy or export it again"
        )
    return ds


def _refuse_unusable_dicom(ds: Dataset, path: Path) -> None:
    """Refuse, before decoding, a DICOM without pixel data, with several frames, or in colour."""
    from pydicom.uid import UID

    if "PixelData" not in ds:
        sop = ds.get("SOPClassUID")
        kind = f" (SOP class {UID(str(sop)).name})" if sop else ""
        raise UnsupportedImageError(
            f"{path}: the DICOM file holds no image (no Pixel Data){kind}; give the radiograph's own image "
            "file, not a report, index or presentation state"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedImageError(
            f"{path}: the DICOM file holds {frames} frames; cxr14 reads single-frame radiographs: export the "
            "frame to predict on as a file of its own"
        )
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise UnsupportedImageError(
            f"{path}: the DICOM image is not grayscale (Photometric Interpretation {photometric or 'missing'}, "
            f"{ds.get('SamplesPerPixel', '?')} samples per pixel); chest radiographs are MONOCHROME1/MONOCHROME2 "
            "with one sample: a colour image is a screenshot or secondary capture, use the original radiograph"
        )


def _syntax_name(syntax: UID) -> str:
    """A transfer syntax's name; pydicom 3.0 does not know JPEG XL's yet."""
    jpeg_xl = {
        "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
        "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
        "1.2.840.10008.1.2.4.112": "JPEG XL",
    }
    name = jpeg_xl.get(str(syntax), syntax.name)
    return name if name != str(syntax) else "an unknown transfer syntax"


def _refuse_undecodable_syntax(ds: Dataset, path: Path) -> None:
    """UnsupportedImageError naming the syntax, UID and missing package when nothing here decodes it."""
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None:
        return  # a bare dataset: pydicom guesses an uncompressed encoding, decoding tells
    syntax = UID(str(syntax))
    name = _syntax_name(syntax)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        video = (
            "; it is a video syntax: save the frame to predict on as a PNG" if "MPEG" in name or "HEVC" in name else ""
        )
        raise UnsupportedImageError(
            f"{path}: the pixel data are compressed as {name} ({syntax}); pydicom {pydicom.__version__} has no "
            "decoder for this transfer syntax, so no package installed here can read it: export the image again "
            f"from its source uncompressed (or as JPEG / JPEG 2000){video}"
        ) from None
    if not decoder.is_available:
        needs = "; ".join(decoder.missing_dependencies) or "a pydicom decoding plugin"
        raise UnsupportedImageError(
            f"{path}: the pixel data are compressed as {name} ({syntax}) and no installed package decodes it: "
            f"install one of [{needs}] with pip, or convert the file to an uncompressed transfer syntax first "
            "(GDCM: `gdcmconv --raw in.dcm out.dcm`)"
        )


def _stored_pixels(ds: Dataset, path: Path) -> np.ndarray:
    from pydicom.uid import UID

    _refuse_undecodable_syntax(ds, path)
    try:
        stored: np.ndarray = ds.pixel_array
    except Exception as error:  # a decoder exists (checked above): the data are damaged, whatever pydicom raises
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        how = f" ({_syntax_name(UID(str(syntax)))})" if syntax else ""
        reason = " ".join(str(error).split())
        raise UnreadableImageError(
            f"{path}: the DICOM pixel data{how} cannot be decoded ({reason}); the file is truncated or corrupt "
            "(or uses a variant of its compression the installed decoders lack): copy or export it again"
        ) from None
    if stored.ndim != 2:
        raise UnsupportedImageError(f"{path}: DICOM pixel array of shape {stored.shape}; expected one 2-D frame")
    return stored


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """[low, high] mapped linearly onto 0..255, clipped, rounded to the nearest level (all 0 if flat)."""
    if not high > low:
        return np.zeros(values.shape, np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float, str] | None:
    """(VOI output, its range low, high, note) for a VOI LUT or window in `ds`, else None.

    A VOI LUT Sequence wins over a window when both are present (as in pydicom). The range that
    becomes 0..255 is the window's full output range (pydicom maps a window onto it), so the
    window's contrast is kept exactly; for a LUT, the smallest..largest entry of the LUT itself,
    because LUT Descriptors often declare 16 bits for 12-bit entries.
    """
    from pydicom.pixels import apply_voi, apply_windowing

    lut = ds.get("VOILUTSequence")
    if lut and "LUTDescriptor" in lut[0] and "LUTData" in lut[0]:
        count, first = int(lut[0].LUTDescriptor[0]) or 2**16, int(lut[0].LUTDescriptor[1])
        entries = apply_voi(np.arange(first, first + count, dtype=np.int64), ds)
        integers = np.rint(values).astype(np.int64)  # LUT inputs are integers
        return apply_voi(integers, ds), float(entries.min()), float(entries.max()), "VOI LUT applied"
    if "WindowCenter" in ds and "WindowWidth" in ds:
        with np.errstate(over="ignore"):  # a SIGMOID window at +-1e15 saturates exactly as intended
            low, high = apply_windowing(np.array([-1e15, 1e15]), ds)
        center, width = (_first(ds.WindowCenter), _first(ds.WindowWidth))
        return apply_windowing(values, ds), float(low), float(high), f"window {center:g}/{width:g} applied"
    return None


def _first(value: Any) -> float:
    """The first of a multi-valued DS element (several windows: the first is the default one)."""
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def dicom_to_gray8(stored: np.ndarray, ds: Dataset) -> tuple[np.ndarray, list[str]]:
    """(2-D uint8 pixels, notes): DICOM stored values -> 8-bit gray, in the DICOM display order.

    1. Modality LUT: the Modality LUT Sequence, or Rescale Slope/Intercept (pydicom's
       ``apply_modality_lut``).
    2. VOI: a VOI LUT Sequence, else Window Center/Width (the first window when several), applied
       by pydicom; see :func:`_voi` for which range becomes 0..255.
    3. To 8 bits, linearly, rounded to the nearest level:
       - after a VOI: its output range (above) -> 0..255, so the chosen window looks as intended;
       - no VOI, and 8-bit unsigned values that are still 0..255 integers: kept as they are,
         exactly like an 8-bit PNG (NIH's own format);
       - otherwise (e.g. 12/16-bit without a window): the image's own min..max -> 0..255. The
         nominal Bits Stored range would leave most detectors' images dark and flat (their data
         use a fraction of it), and the file says nothing better about how to show them; NIH's
         PNGs, like the phantom, use most of 0..255.
    4. MONOCHROME1 (low values white) inverted: ``255 - x``, after step 3 so that the result is
       exactly the MONOCHROME2 image of the same data. Presentation LUT Shape is not applied: in
       DX objects INVERSE merely accompanies MONOCHROME1 (applying both would invert twice).
    """
    from pydicom.pixels import apply_modality_lut

    notes = []
    values = apply_modality_lut(stored, ds)
    if ds.get("ModalityLUTSequence"):
        notes.append("modality LUT applied")
    elif values is not stored and (float(ds.RescaleSlope) != 1 or float(ds.RescaleIntercept) != 0):
        notes.append(f"rescale slope {float(ds.RescaleSlope):g} intercept {float(ds.RescaleIntercept):g} applied")
    voi = _voi(values, ds)
    bits = int(ds.get("BitsStored", stored.dtype.itemsize * 8))
    if voi is not None:
        output, low, high, note = voi
        pixels = _to_uint8(output, low, high)
        notes.append(note)
    elif bits <= 8 and values.min() >= 0 and values.max() <= 255 and np.array_equal(values, np.rint(values)):
        pixels = values.astype(np.uint8)
    else:
        low, high = float(values.min()), float(values.max())
        pixels = _to_uint8(values, low, high)
        notes.append(f"{bits}-bit scaled to 8-bit (image range {low:g}..{high:g} -> 0..255)")
    if str(ds.PhotometricInterpretation).upper() == "MONOCHROME1":
        pixels = 255 - pixels
        notes.append("MONOCHROME1 inverted")
    return pixels, notes


def _dicom_text(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip().upper()
    return value or None


def _read_dicom_radiograph(path: Path, has_magic: bool) -> Radiograph:
    ds = _open_dicom(path, has_magic)
    _refuse_unusable_dicom(ds, path)
    stored = _stored_pixels(ds, path)
    try:
        pixels, notes = dicom_to_gray8(stored, ds)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, NotImplementedError) as error:
        raise UnreadableImageError(
            f"{path}: invalid DICOM grayscale attributes (rescale, window or VOI LUT): {error}; fix them (or "
            "remove the faulty window/LUT) with a DICOM editor, or export the image again"
        ) from None
    return Radiograph(
        path=path,
        pixels=pixels,
        kind="dicom",
        original_dtype=str(stored.dtype),
        original_shape=tuple(stored.shape),
        notes=notes,
        view=_dicom_text(ds, "ViewPosition"),
        modality=_dicom_text(ds, "Modality"),
    )


# ---------------------------------------------------------------------------------------- reading
def _sniff(path: Path) -> tuple[Kind, bool]:
    """(kind, DICM preamble present) from the content; the suffix decides only for a bare DICOM dataset."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(DICOM_MAGIC_OFFSET + len(DICOM_MAGIC))
    except FileNotFoundError:
        raise MissingInputError(f"{path}: no such image file; check the path") from None
    except OSError as error:
        raise UnreadableImageError(f"{path}: cannot open the file ({error.strerror}); check its permissions") from None
    if head.startswith(_PNG_MAGIC):
        return "png", False
    if head.startswith(_JPEG_MAGIC):
        return "jpeg", False
    if head[DICOM_MAGIC_OFFSET:] == DICOM_MAGIC:
        return "dicom", True
    if path.suffix.lower() in (".dcm", ".dicom"):
        return "dicom", False  # maybe a bare dataset without the file preamble: pydicom tries (force)
    if path.suffix.lower() in SUPPORTED_SUFFIXES:
        raise UnreadableImageError(
            f"{path}: not a {path.suffix.lstrip('.').upper()} file (its first bytes are neither PNG, JPEG nor "
            "DICOM); the file is damaged or misnamed: copy or export it again"
        )
    raise UnsupportedImageError(
        f"{path}: not a supported image: expected {_suffix_list()} or a DICOM file; convert it to PNG"
    )


def read_radiograph(path: Path) -> Radiograph:
    """Read a PNG, JPEG or DICOM file as one 8-bit grayscale image at full resolution.

    The kind comes from the file's first bytes (a DICOM may have any suffix or none). PNG and
    JPEG are converted exactly as the cache converts its PNGs (:func:`to_gray8`); a JPEG must
    end with its end-of-image marker. DICOM goes through :func:`dicom_to_gray8`.

    Raises:
        MissingInputError: no such file.
        UnreadableImageError: corrupt, truncated or not an image; names the file.
        UnsupportedImageError: a valid file cxr14 does not read (pixel type, DICOM transfer syntax
            no installed package decodes, colour or multi-frame DICOM, no pixel data); names the
            file and what to do.
    """
    path = Path(path)
    kind, has_magic = _sniff(path)
    if kind == "dicom":
        return _read_dicom_radiograph(path, has_magic)
    return _read_bitmap_radiograph(path, kind)


def prepare_for_model(path: Path, size: int) -> tuple[np.ndarray, Radiograph]:
    """(size x size uint8 pixels, the radiograph): for a PNG, exactly the cache's row for it."""
    radiograph = read_radiograph(path)
    return resize_area(radiograph.pixels, size), radiograph


# --------------------------------------------------------------------------------------- checking
def _view_findings(radiograph: Radiograph) -> tuple[list[str], list[str]]:
    view = " ".join((radiograph.view or "").replace("_", " ").replace("-", " ").split())
    if not view or view in FRONTAL_VIEWS:
        return [], []
    if view in LATERAL_VIEWS or view in OBLIQUE_VIEWS:
        kind = "a lateral" if view in LATERAL_VIEWS else "an oblique"
        return [
            f"View Position {view}: {kind} view; the models were trained on frontal (PA/AP) chest radiographs only"
        ], []
    return [], [f"View Position {view} is neither PA nor AP; the models were trained on frontal PA/AP views only"]


def _modality_findings(radiograph: Radiograph) -> tuple[list[str], list[str]]:
    modality = radiograph.modality
    if modality is None or modality in RADIOGRAPH_MODALITIES:
        return [], []
    if modality in NON_RADIOGRAPH_MODALITIES:
        return [f"Modality {modality} is not a projection radiograph; the models read chest X-rays (CR/DX)"], []
    return [], [f"Modality {modality} is not CR/DX; the models were trained on chest X-rays"]


def _colour_findings(radiograph: Radiograph) -> tuple[list[str], list[str]]:
    spread = radiograph.colourfulness
    if spread >= COLOUR_REFUSED:
        return [
            f"not a grayscale radiograph: its colour channels differ by {spread:.1f} grey levels on average "
            f"(a colour photograph or screenshot; refused from {COLOUR_REFUSED:g})"
        ], []
    if spread >= COLOUR_WARNED:
        return [], [f"tinted: its colour channels differ by {spread:.1f} grey levels on average; radiographs are gray"]
    return [], []


def _shape_findings(radiograph: Radiograph, min_side: int) -> list[str]:
    height, width = radiograph.pixels.shape
    warnings = []
    low, high = ASPECT_RANGE
    if not low <= width / height <= high:
        warnings.append(
            f"aspect ratio {width}x{height} (width/height {width / height:.2f}) is outside {low:g}..{high:g}: "
            "the models saw square images, and the resize to a square will distort this one"
        )
    if min(height, width) < min_side:
        warnings.append(
            f"small image ({width}x{height}): its shorter side is under {min_side} px, so it is upsampled "
            "and fine detail is missing (NIH's radiographs are 1024 px)"
        )
    return warnings


def intensity_spread(pixels: np.ndarray) -> int:
    """Grey levels between the 1st and the 99th percentile of an 8-bit image."""
    counts = np.cumsum(np.bincount(pixels.ravel(), minlength=256))
    low, high = np.searchsorted(counts, [0.01 * counts[-1], 0.99 * counts[-1]])
    return int(high - low)


def _intensity_findings(radiograph: Radiograph) -> tuple[list[str], list[str]]:
    spread = intensity_spread(radiograph.pixels)
    if spread < MIN_INTENSITY_SPREAD:
        hint = ""
        if radiograph.original_dtype == "uint16" and radiograph.kind != "dicom":
            hint = (
                "; it is a 16-bit image of which only the high byte is kept (as for NIH's 16-bit PNGs): if "
                "its values use only the low bits (e.g. 12-bit data), stretch them to 0..65535 or save it as 8-bit"
            )
        return [
            f"almost constant image: 98% of its pixels lie within {_levels(spread)} (refused under "
            f"{MIN_INTENSITY_SPREAD}); there is no radiograph to read{hint}"
        ], []
    if spread < LOW_INTENSITY_SPREAD:
        return [], [
            f"low contrast: 98% of its pixels lie within {spread} of 256 grey levels (the training images "
            f"span ~160-250); a faded scan or an unusual window"
        ]
    return [], []


def _levels(spread: int) -> str:
    return "a single grey level" if spread == 0 else f"{spread} grey levels"


def check_radiograph(radiograph: Radiograph, *, min_side: int = MIN_SIDE) -> tuple[list[str], list[str]]:
    """(problems, warnings) of an image compared with the training data; problems refuse it.

    Refused: a lateral or oblique DICOM View Position, a DICOM Modality that is not a projection
    radiograph (CT, MR, US, ...), colour (:data:`COLOUR_REFUSED`), an almost constant image
    (:data:`MIN_INTENSITY_SPREAD`). Warned: another non-PA/AP view, an unexpected modality, a
    tint, an aspect ratio outside :data:`ASPECT_RANGE`, a shorter side under `min_side`, low
    contrast (:data:`LOW_INTENSITY_SPREAD`). The messages do not repeat the file name: prefix it.
    """
    problems: list[str] = []
    warnings: list[str] = []
    for found_problems, found_warnings in (
        _view_findings(radiograph),
        _modality_findings(radiograph),
        _colour_findings(radiograph),
        ([], _shape_findings(radiograph, min_side)),
        _intensity_findings(radiograph),
    ):
        problems += found_problems
        warnings += found_warnings
    return problems, warnings
