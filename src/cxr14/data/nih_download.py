"""Download, verify and safely unpack the NIH ChestX-ray14 image archives.

    archives = official_archives()                       # 12 x images_0NN.tar.gz, ~45 GB in all
    download_nih(archives, Path("downloads/nih"), Path("data/nih"))
    fetch_metadata("https://.../Data_Entry_2017.csv", Path("data/nih/Data_Entry_2017.csv"))

A multi-gigabyte download over a flaky link must be restartable without redoing work: bytes
stream into `<name>.part`, an interrupted transfer resumes with an HTTP Range request, and only
a file whose MD5 matches is renamed to its final name. A verified archive carries a small
`<name>.md5` stamp (md5, size, mtime), so a re-run neither hashes 4 GB again nor asks the server
anything. Extraction refuses archives with members that could write outside the target folder.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cxr14.errors import Cxr14Error, MissingInputError
from cxr14.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from cxr14.io import progress as progress_bar

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://nihcc.box.com/shared/static"

# The official box.com ids, MD5s and image counts of images_001 ... images_012, in order
# (the ids are the links of NIH's batch_download_zips.py).
_ARCHIVE_IDS = (
    "vfk49d74nhbxq3nqjg0900w5nvkorp5c",
    "i28rlmbvmfjbl8p2n3ril0pptcmcu9d1",
    "f1t00wrtdk94satdfb9olcolqx20z2jp",
    "0aowwzs5lhjrceb3qp67ahp0rd1l1etg",
    "v5e3goj22zr6h8tzualxfsqlqaygfbsn",
    "asi7ikud9jwnkrnkj99jnpfkjdes7l6l",
    "jn1b4mw4n6lnh74ovmcjb8y48h8xj07n",
    "tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j",
    "upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj",
    "l6nilvfa9cg3s28tqv1qc1olm3gnz54p",
    "hhq8fkdgvcari67vfhs7ppg2w6ni4jze",
    "ioqwiy20ihqwyr8pf4c24eazhh281pbu",
)
_ARCHIVE_MD5S = (
    "fe8ed0a6961412fddcbb3603c11b3698",
    "ab07a2d7cbe6f65ddd97b4ed7bde10bf",
    "2301d03bde4c246388bad3876965d574",
    "9f1b7f5aae01b13f4bc8e2c44a4b8ef6",
    "1861f3cd0ef7734df8104f2b0309023b",
    "456b53a8b351afd92a35bc41444c58c8",
    "1075121ea20a137b87f290d6a4a5965e",
    "b61f34cec3aa69f295fbb593cbd9d443",
    "442a3caa61ae9b64e61c561294d1e183",
    "09ec81c4c31e32858ad8cf965c494b74",
    "499aefc67207a5a97692424cf5dbeed5",
    "dc9fda1757c2de0032b63347a7d2895c",
)
_ARCHIVE_IMAGE_COUNTS = (4_999,) + (10_000,) * 10 + (7_121,)

# Used when the server does not announce a size: the release is ~45 GB in 12 archives, and
# PNGs do not compress, so an archive unpacks to about its own size again.
ESTIMATED_ARCHIVE_BYTES = 45 * 10**9 // 12
_PERMANENT_HTTP_ERRORS = frozenset(range(400, 500)) - {408, 425, 429}
_HASH_BLOCK_BYTES = 1 << 22


class NihDownloadError(Cxr14Error, RuntimeError):
    """Base class: fetching or unpacking the NIH archives failed."""


class DownloadError(NihDownloadError):
    """A transfer failed for good (retries exhausted, or the server refused the URL)."""


class ChecksumError(NihDownloadError):
    """A completed download does not have the expected MD5."""


class UnsafeArchiveError(NihDownloadError):
    """An archive holds a member that could write outside the extraction folder."""


class InsufficientDiskSpaceError(NihDownloadError):
    """Not enough free space for the remaining downloads and their extraction."""


@dataclass(frozen=True)
class Archive:
    """One image archive of the release: local file name, source URL, MD5 and image count."""

    name: str
    url: str
    md5: str
    n_images: int


class _IncompleteTransfer(Exception):
    """The server closed the body early; retried like a network error."""


def official_archives(base_url: str = DEFAULT_BASE_URL) -> list[Archive]:
    """The 12 official archives; `base_url` points them at a mirror (or a test server)."""
    base_url = base_url.rstrip("/")
    return [
        Archive(name=f"images_{number:03d}.tar.gz", url=f"{base_url}/{box_id}.gz", md5=md5, n_images=n_images)
        for number, (box_id, md5, n_images) in enumerate(
            zip(_ARCHIVE_IDS, _ARCHIVE_MD5S, _ARCHIVE_IMAGE_COUNTS, strict=True), start=1
        )
    ]


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _md5_of_file(path: Path) -> hashlib._Hash:
    hasher = hashlib.md5()
    with path.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK_BYTES):
            hasher.update(block)
    return hasher


def _write_stamp(path: Path, md5: str) -> None:
    status = path.stat()
    atomic_write_json(_sibling(path, ".md5"), {"md5": md5, "size": status.st_size, "mtime_ns": status.st_mtime_ns})


def _stamp_matches(path: Path, md5: str) -> bool:
    """True when the stamp vouches for `path` as it is now (same md5, size and mtime)."""
    try:
        stamp = json.loads(_sibling(path, ".md5").read_text(encoding="utf-8"))
        status = path.stat()
    except (OSError, ValueError):
        return False
    return stamp == {"md5": md5.lower(), "size": status.st_size, "mtime_ns": status.st_mtime_ns}


def _existing_file_is_valid(dest: Path, md5: str | None) -> bool:
    """Whether `dest` can be used as is; a file with the wrong MD5 is moved aside."""
    if md5 is None:
        log.info("%s already present (no checksum to verify)", dest)
        return True
    if _stamp_matches(dest, md5):
        log.info("%s already verified (stamp matches)", dest)
        return True
    actual_md5 = _md5_of_file(dest).hexdigest()
    if actual_md5 == md5.lower():
        _write_stamp(dest, actual_md5)
        log.info("%s already present, MD5 verified", dest)
        return True
    log.warning(
        "%s has MD5 %s, expected %s: moving it to %s and downloading again",
        dest,
        actual_md5,
        md5,
        _sibling(dest, ".corrupt"),
    )
    os.replace(dest, _sibling(dest, ".corrupt"))
    _sibling(dest, ".md5").unlink(missing_ok=True)
    return False


def download_file(
    url: str,
    dest: Path,
    md5: str | None = None,
    retries: int = 5,
    backoff_seconds: float = 2.0,
    timeout: float = 60.0,
    chunk_bytes: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download `url` to `dest` resumably, verifying `md5` before the file gets its final name.

    Args:
        url: http(s) URL of the file.
        dest: final path; bytes accumulate in `<dest>.part` until the transfer is complete.
        md5: expected hex digest; None skips verification (and any existing `dest` is trusted).
        retries: failed attempts tolerated before giving up; each resumes from the part file.
        backoff_seconds: wait after the first failure, doubled after each further one.
        timeout: socket timeout per connect/read, so a stalled link counts as a failure.
        chunk_bytes: read size; also how often the progress bar and hash advance.
        progress: show a byte progress bar.

    Returns:
        `dest`.

    Raises:
        DownloadError: the server refused the URL, or `retries` attempts failed (the part file
            is kept, so re-running resumes).
        ChecksumError: the completed file has another MD5; it is moved to `<dest>.corrupt`.
    """
    dest = Path(dest)
    if retries < 1:
        raise ValueError(f"download_file({url}): retries must be >= 1, got {retries}")
    if dest.exists() and _existing_file_is_valid(dest, md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part_path = _sibling(dest, ".part")
    state = _PartState()
    _transfer_with_retries(url, part_path, state, retries, backoff_seconds, timeout, chunk_bytes, progress)
    return _verify_and_rename(url, dest, part_path, state, md5)


def _transfer_with_retries(
    url: str,
    part_path: Path,
    state: _PartState,
    retries: int,
    backoff_seconds: float,
    timeout: float,
    chunk_bytes: int,
    progress: bool,
) -> None:
    """Fill `part_path` with `url`'s bytes, resuming after each failure (see :func:`download_file`)."""
    for attempt in range(retries):
        state.sync_with(part_path)
        try:
            _transfer_once(url, part_path, state, timeout, chunk_bytes, show_progress=progress)
            return
        except urllib.error.HTTPError as error:
            if error.code in _PERMANENT_HTTP_ERRORS:
                raise DownloadError(
                    f"{url}: the server answered HTTP {error.code} {error.reason}; check the URL "
                    "(or the base_url of the mirror)"
                ) from error
            failure: BaseException = error
        except (OSError, http.client.HTTPException, _IncompleteTransfer) as error:
            failure = error
        on_disk = part_path.stat().st_size if part_path.exists() else 0
        if attempt + 1 == retries:
            raise DownloadError(
                f"{url}: giving up after {retries} failed attempts with {on_disk} bytes received "
                f"(last error: {failure}); {part_path} is kept, re-run to resume"
            ) from failure
        wait_seconds = backoff_seconds * 2**attempt
        log.warning(
            "%s: attempt %d/%d failed at %d bytes (%s); retrying in %.2g s",
            url,
            attempt + 1,
            retries,
            on_disk,
            failure,
            wait_seconds,
        )
        time.sleep(wait_seconds)


def _verify_and_rename(url: str, dest: Path, part_path: Path, state: _PartState, md5: str | None) -> Path:
    """Give the complete part file its final name `dest` if its MD5 matches, else move it aside."""
    actual_md5 = state.hasher.hexdigest()
    if md5 is not None and actual_md5 != md5.lower():
        corrupt_path = _sibling(dest, ".corrupt")
        os.replace(part_path, corrupt_path)  # never resumed from, never mistaken for the real file
        raise ChecksumError(
            f"{dest}: downloaded from {url} but the MD5 is {actual_md5}, expected {md5}; the file was moved "
            f"to {corrupt_path}. Re-run to download it again; if it keeps happening the mirror serves "
            "another file"
        )
    os.replace(part_path, dest)
    if md5 is not None:
        _write_stamp(dest, actual_md5)
    log.info("downloaded %s (%d bytes, MD5 %s)", dest, state.n_bytes, actual_md5)
    return dest


class _PartState:
    """MD5 and length of the part file's bytes, kept across attempts so a resume hashes only new bytes."""

    def __init__(self) -> None:
        self.hasher, self.n_bytes = hashlib.md5(), 0

    def sync_with(self, part_path: Path) -> None:
        """Re-hash the part file when it is not what this state describes (e.g. left by an earlier run)."""
        on_disk = part_path.stat().st_size if part_path.exists() else 0
        if on_disk != self.n_bytes:
            self.hasher = _md5_of_file(part_path) if on_disk else hashlib.md5()
            self.n_bytes = on_disk


def _transfer_once(
    url: str, part_path: Path, state: _PartState, timeout: float, chunk_bytes: int, show_progress: bool
) -> None:
    """One HTTP attempt, appending to `part_path` and updating `state` chunk by chunk.

    Raises `_IncompleteTransfer` / OSError when the body stops early, so the caller retries.
    """
    start_byte = state.n_bytes
    headers = {"Range": f"bytes={start_byte}-"} if start_byte else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not start_byte:
            raise
        # Nothing left to send: the part is complete, unless the server says the file is another size.
        total = (error.headers.get("Content-Range") or "").rpartition("/")[2]
        error.close()
        if total.isdigit() and int(total) != start_byte:
            part_path.unlink()
            raise _IncompleteTransfer(
                f"{part_path} ({start_byte} bytes) does not match the remote size {total}"
            ) from error
        return
    with response:
        if start_byte and response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {start_byte}-"):
                part_path.unlink()
                raise _IncompleteTransfer(f"{url} answered Range {start_byte}- with '{content_range}'")
            mode = "ab"
        else:  # 200: the server ignored Range and sends everything, so start over
            if start_byte:
                log.info("%s ignored the Range request; restarting from byte 0", url)
            state.hasher, state.n_bytes = hashlib.md5(), 0
            start_byte, mode = 0, "wb"
        length_header = response.headers.get("Content-Length")
        body_bytes = int(length_header) if length_header and length_header.isdigit() else None
        received = 0
        with (
            part_path.open(mode) as part_stream,
            progress_bar(
                total=None if body_bytes is None else start_byte + body_bytes,
                initial=start_byte,
                desc=part_path.name.removesuffix(".part"),
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                disable_bar=not show_progress,
            ) as bar,
        ):
            while chunk := response.read(chunk_bytes):
                part_stream.write(chunk)
                state.hasher.update(chunk)
                state.n_bytes += len(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if body_bytes is not None and received < body_bytes:
        raise _IncompleteTransfer(f"connection closed after {received} of {body_bytes} bytes")


def _remote_size(url: str, timeout: float = 30.0) -> int | None:
    """Content-Length from a HEAD request, or None when the server does not say."""
    # urllib turns HEAD into GET after a redirect (box.com redirects); closing the response
    # unread costs at most a buffer's worth of the body.
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            length_header = response.headers.get("Content-Length")
    except (OSError, http.client.HTTPException) as error:
        log.warning("%s: size query failed (%s); assuming %d bytes", url, error, ESTIMATED_ARCHIVE_BYTES)
        return None
    return int(length_header) if length_header and length_header.isdigit() else None


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _check_free_space(needs: dict[Path, int], required_margin_bytes: int) -> None:
    """Raise unless each file system holding a folder in `needs` has room for its bytes."""
    by_device: dict[int, tuple[list[Path], int]] = {}
    for folder, needed in needs.items():
        device = _existing_ancestor(folder).stat().st_dev
        folders, total = by_device.get(device, ([], 0))
        by_device[device] = (folders + [folder], total + needed)
    for folders, needed in by_device.values():
        needed += required_margin_bytes
        free = shutil.disk_usage(_existing_ancestor(folders[0])).free
        if needed > free:
            raise InsufficientDiskSpaceError(
                f"{' and '.join(str(folder) for folder in folders)}: need {needed} bytes "
                f"({needed / 1e9:.1f} GB) for the remaining archives and their extraction but only {free} "
                f"bytes ({free / 1e9:.1f} GB) are free; free some space or choose another folder"
            )


def download_nih(
    archives: list[Archive],
    download_dir: Path,
    extract_dir: Path,
    retries: int = 5,
    backoff_seconds: float = 2.0,
    progress: bool = True,
    required_margin_bytes: int = 0,
) -> list[Path]:
    """Download, verify and extract `archives`, skipping whatever earlier runs finished.

    Free space is checked before any download starts, so a full disk fails in seconds instead
    of hours in. An archive whose `.extracted-<name>` marker exists in `extract_dir` is not
    extracted again, and not fetched again either if it was deleted afterwards to save space.

    Args:
        archives: what to fetch, usually `official_archives()`.
        download_dir: where the `.tar.gz` files (and their part/stamp files) go.
        extract_dir: where the archives unpack (`extract_dir/images/*.png`).
        retries: failed attempts tolerated per archive (see `download_file`).
        backoff_seconds: first retry wait per archive.
        progress: show byte progress bars.
        required_margin_bytes: free space to keep beyond the estimate (headroom for later stages).

    Returns:
        The local archive paths, in the order of `archives`.

    Raises:
        InsufficientDiskSpaceError: before any download, when the remaining work does not fit.
        DownloadError, ChecksumError, UnsafeArchiveError: see `download_file` and `safe_extract`.
    """
    download_dir, extract_dir = Path(download_dir), Path(extract_dir)
    _check_free_space(_space_needed(archives, download_dir, extract_dir), required_margin_bytes)

    archive_paths = []
    for archive in archives:
        archive_path = download_dir / archive.name
        marker_path = extract_dir / f".extracted-{archive.name}"
        archive_paths.append(archive_path)
        if marker_path.exists() and not archive_path.exists():
            log.info("%s already extracted (archive deleted since); skipping", archive.name)
            continue
        download_file(
            archive.url,
            archive_path,
            md5=archive.md5,
            retries=retries,
            backoff_seconds=backoff_seconds,
            progress=progress,
        )
        if marker_path.exists():
            log.info("%s already extracted into %s; skipping", archive.name, extract_dir)
            continue
        n_files = safe_extract(archive_path, extract_dir)
        if n_files != archive.n_images:
            log.warning("%s: extracted %d files, the release lists %d images", archive.name, n_files, archive.n_images)
        atomic_write_text(marker_path, f"{archive.md5} {n_files}\n")
    return archive_paths


def _space_needed(archives: list[Archive], download_dir: Path, extract_dir: Path) -> dict[Path, int]:
    """Bytes the remaining downloads and extractions will write, per folder (one entry if they are the same)."""
    download_needed, extract_needed = 0, 0
    for archive in archives:
        archive_path = download_dir / archive.name
        if (extract_dir / f".extracted-{archive.name}").exists():
            continue
        if archive_path.exists():
            extract_needed += archive_path.stat().st_size
            continue
        size = _remote_size(archive.url) or ESTIMATED_ARCHIVE_BYTES
        part_path = _sibling(archive_path, ".part")
        download_needed += max(size - (part_path.stat().st_size if part_path.exists() else 0), 0)
        extract_needed += size
    needs = {download_dir: download_needed}
    needs[extract_dir] = needs.get(extract_dir, 0) + extract_needed
    return needs


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _check_member(archive: Path, member: tarfile.TarInfo, target_root: Path) -> None:
    """Raise UnsafeArchiveError if extracting `member` could touch anything outside `target_root`."""

    def refuse(reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"{archive}: member '{member.name}' {reason}; refusing to extract anything from this archive "
            "(re-download it from the official source)"
        )

    member_path = PurePosixPath(member.name)
    if member_path.is_absolute() or member.name.startswith(("/", "\\")):
        raise refuse("has an absolute path")
    if ".." in member_path.parts:
        raise refuse("has a '..' component")
    destination = (target_root / member_path).resolve()
    if not _is_within(destination, target_root):
        raise refuse("resolves outside the target folder")
    if member.issym() or member.islnk():
        # An absolute link target escapes below too, since base / "/etc/passwd" is "/etc/passwd".
        link_path = PurePosixPath(member.linkname)
        # A symlink is relative to its own folder; a hard link names another archive path.
        base = (target_root / member_path).parent if member.issym() else target_root
        if not _is_within((base / link_path).resolve(), target_root):
            raise refuse(f"links to '{member.linkname}', outside the target folder")
    elif not (member.isreg() or member.isdir()):
        raise refuse("is a device, fifo or other special file")


def safe_extract(archive: Path, target_dir: Path) -> int:
    """Extract the regular files and folders of `archive` into `target_dir`; return the file count.

    Every member is checked before anything is written, so a malicious archive leaves no
    trace (for a .tar.gz this costs a second decompression pass). Files unpack into a staging
    folder inside `target_dir` and are then renamed into place, so an interrupted extraction
    never leaves a truncated image under its real name.
    Links that stay inside the target are skipped (the release has none).

    Raises:
        UnsafeArchiveError: a member has an absolute path, a '..' component, is a link pointing
            outside `target_dir`, or is a device/fifo.
    """
    archive, target_dir = Path(archive), Path(target_dir)
    target_root = target_dir.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(archive, member, target_root)
        wanted = [member for member in members if member.isreg() or member.isdir()]
        if len(wanted) < len(members):
            log.warning("%s: skipping %d link members", archive, len(members) - len(wanted))
        target_dir.mkdir(parents=True, exist_ok=True)
        for stale in target_dir.glob(f".{archive.name}.*.partial"):  # left by a killed extraction
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".partial", dir=target_dir))
        try:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the stdlib's own safety net too
                tar.extractall(staging, members=wanted, filter="data")
            else:
                tar.extractall(staging, members=wanted)
            moved_names: set[str] = set()  # a tar may repeat a name; the last copy wins, as in tar
            for member in wanted:
                if member.isdir():
                    (target_dir / member.name).mkdir(parents=True, exist_ok=True)
                elif member.name not in moved_names:
                    final_path = target_dir / member.name
                    final_path.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / member.name, final_path)
                    moved_names.add(member.name)
            n_files = len(moved_names)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log.info("extracted %d files from %s into %s", n_files, archive, target_dir)
    return n_files


def fetch_metadata(source: str, dest: Path) -> Path:
    """Copy or download a metadata file (e.g. Data_Entry_2017.csv) to `dest`, atomically.

    Unlike the archives this always fetches afresh: the file is small and has no published
    checksum, so a fresh copy is cheap and an out-of-date one could not be detected.

    Args:
        source: a local path, or an http(s) URL.
        dest: where the file goes; replaced only once the new copy is complete.
    """
    dest = Path(dest)
    if source.startswith(("http://", "https://")):
        staging = dest.with_name(f".{dest.name}.fetching")
        for leftover in (staging, _sibling(staging, ".part")):  # the source may have changed since
            leftover.unlink(missing_ok=True)
        download_file(source, staging, md5=None, progress=False)
        os.replace(staging, dest)
    else:
        source_path = Path(source).expanduser()
        if not source_path.is_file():
            raise MissingInputError(
                f"metadata source {source_path} does not exist; give the path of the downloaded file or its http(s) URL"
            )
        atomic_write_bytes(dest, source_path.read_bytes())
    log.info("metadata %s -> %s", source, dest)
    return dest
