"""NIH archive download, resume, verification and safe extraction, against a real HTTP server.

The server is a threaded `http.server` on 127.0.0.1 serving files from a temp folder, with
Range support, a request log, and switches that cut a transfer mid-body or ignore Range.
Archives are real .tar.gz files of small PNGs in the NIH layout (`images/00000001_000.png`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import random
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pytest

from cxr14.data.nih_download import (
    Archive,
    ChecksumError,
    DownloadError,
    InsufficientDiskSpaceError,
    UnsafeArchiveError,
    download_file,
    download_nih,
    fetch_metadata,
    official_archives,
    safe_extract,
)

FAST = {"backoff_seconds": 0.01, "progress": False}


class _RangeHandler(BaseHTTPRequestHandler):
    server: _FileServer

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def _serve(self, send_body: bool) -> None:
        server = self.server
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        with server.lock:
            is_first_get = send_body and not server.gets(name)
            server.requests.append((self.command, name, range_header))
        path = server.root / name
        if not path.is_file():
            self.send_error(404)
            return
        payload = path.read_bytes()
        start = 0
        if range_header and not server.ignore_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            if start >= len(payload):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(payload)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body:
            return
        cut_after = server.cut_every_get.get(name, server.cut_first_get.get(name) if is_first_get else None)
        if cut_after is None:
            self.wfile.write(body)
            return
        self.wfile.write(body[:cut_after])  # then drop the connection, as a flaky link would
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


class _FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root = root
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, file name, Range header)
        self.cut_first_get: dict[str, int] = {}  # file name -> body bytes sent before the first GET is cut
        self.cut_every_get: dict[str, int] = {}  # file name -> body bytes sent before every GET is cut
        self.ignore_range = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def serve(self, name: str, payload: bytes) -> tuple[str, str]:
        """Publish `payload` as `name`; return its URL and MD5."""
        (self.root / name).write_bytes(payload)
        return f"{self.base_url}/{name}", hashlib.md5(payload).hexdigest()

    def gets(self, name: str | None = None) -> list[str | None]:
        """Range headers of the GET requests so far (for `name`, or for every file)."""
        return [rng for method, path, rng in self.requests if method == "GET" and name in (None, path)]

    def handle_error(self, request, client_address) -> None:  # the cut connections are deliberate
        pass


@pytest.fixture
def file_server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    server = _FileServer(root)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _random_bytes(n_bytes: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n_bytes)


def _nih_like_archive(first_patient: int, n_images: int) -> dict[str, bytes]:
    """`images/<patient>_000.png` -> PNG bytes, like one NIH archive (16x16 noise images)."""
    rng = np.random.default_rng(first_patient)
    members = {}
    for patient in range(first_patient, first_patient + n_images):
        ok, png = cv2.imencode(".png", rng.integers(0, 256, size=(16, 16), dtype=np.uint8))
        assert ok
        members[f"images/{patient:08d}_000.png"] = png.tobytes()
    return members


def _tar_gz(members: dict[str, bytes], directories: tuple[str, ...] = ("images",)) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def test_official_archives_lists_the_release():
    archives = official_archives("https://mirror.example/static/")
    assert [archive.name for archive in archives] == [f"images_{number:03d}.tar.gz" for number in range(1, 13)]
    assert archives[0].url == "https://mirror.example/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz"
    assert archives[-1].md5 == "dc9fda1757c2de0032b63347a7d2895c"
    assert sum(archive.n_images for archive in archives) == 112_120
    assert official_archives()[0].url.startswith("https://nihcc.box.com/shared/static/")


def test_download_nih_fetches_verifies_and_extracts_each_archive_once(file_server, tmp_path):
    expected_images: dict[str, bytes] = {}
    archives = []
    for index, official in enumerate(official_archives(file_server.base_url)[:3]):
        members = _nih_like_archive(first_patient=1 + 10 * index, n_images=3)
        expected_images.update(members)
        url, md5 = file_server.serve(official.url.rsplit("/", 1)[1], _tar_gz(members))
        assert url == official.url
        archives.append(dataclasses.replace(official, md5=md5, n_images=len(members)))
    download_dir, extract_dir = tmp_path / "downloads", tmp_path / "raw"

    paths = download_nih(archives, download_dir, extract_dir, retries=2, **FAST)

    assert paths == [download_dir / archive.name for archive in archives]
    assert [_md5(path) for path in paths] == [archive.md5 for archive in archives]
    extracted = {path.relative_to(extract_dir).as_posix(): path.read_bytes() for path in extract_dir.rglob("*.png")}
    assert extracted == expected_images
    assert "images/00000001_000.png" in extracted
    assert all((extract_dir / f".extracted-{archive.name}").is_file() for archive in archives)
    assert not list(download_dir.glob("*.part")) and not list(extract_dir.glob(".*.partial"))
    assert len(file_server.gets()) == 3

    # A re-run finds stamps and markers: no request at all, and no re-extraction.
    n_requests = len(file_server.requests)
    (extract_dir / "images/00000001_000.png").unlink()
    assert download_nih(archives, download_dir, extract_dir, retries=2, **FAST) == paths
    assert len(file_server.requests) == n_requests
    assert not (extract_dir / "images/00000001_000.png").exists()


def test_interrupted_transfer_resumes_from_the_cut_offset(file_server, tmp_path):
    url, md5 = file_server.serve("images_001.gz", _random_bytes(20_000))
    file_server.cut_first_get["images_001.gz"] = 3_000
    dest = tmp_path / "images_001.tar.gz"

    assert download_file(url, dest, md5=md5, retries=3, chunk_bytes=1024, **FAST) == dest

    assert file_server.gets() == [None, "bytes=3000-"]
    assert _md5(dest) == md5
    assert not (tmp_path / "images_001.tar.gz.part").exists()


def test_server_ignoring_range_restarts_from_zero(file_server, tmp_path):
    payload = _random_bytes(20_000)
    url, md5 = file_server.serve("archive.gz", payload)
    file_server.cut_first_get["archive.gz"] = 3_000
    file_server.ignore_range = True
    dest = tmp_path / "archive.tar.gz"

    download_file(url, dest, md5=md5, retries=3, chunk_bytes=1024, **FAST)

    assert file_server.gets() == [None, "bytes=3000-"]  # asked to resume, answered 200 with everything
    assert dest.read_bytes() == payload  # the part was truncated, not appended to


def test_complete_part_answered_with_416_is_accepted(file_server, tmp_path):
    payload = _random_bytes(5_000)
    url, md5 = file_server.serve("archive.gz", payload)
    dest = tmp_path / "archive.tar.gz"
    (tmp_path / "archive.tar.gz.part").write_bytes(payload)

    download_file(url, dest, md5=md5, retries=2, **FAST)

    assert file_server.gets() == ["bytes=5000-"]
    assert dest.read_bytes() == payload


def test_wrong_md5_raises_and_the_bad_file_is_not_resumed(file_server, tmp_path):
    url, md5 = file_server.serve("archive.gz", _random_bytes(8_000))
    dest = tmp_path / "archive.tar.gz"
    wrong_md5 = "0" * 32

    with pytest.raises(ChecksumError) as raised:
        download_file(url, dest, md5=wrong_md5, retries=2, **FAST)

    assert wrong_md5 in str(raised.value) and md5 in str(raised.value) and str(dest) in str(raised.value)
    assert not dest.exists() and not (tmp_path / "archive.tar.gz.part").exists()
    assert (tmp_path / "archive.tar.gz.corrupt").exists()

    download_file(url, dest, md5=md5, retries=2, **FAST)
    assert file_server.gets() == [None, None]  # the rerun started from byte 0
    assert _md5(dest) == md5


def test_verified_file_is_not_fetched_again_unless_it_changed(file_server, tmp_path):
    url, md5 = file_server.serve("archive.gz", _random_bytes(8_000))
    dest = tmp_path / "archive.tar.gz"
    download_file(url, dest, md5=md5, retries=2, **FAST)
    assert (tmp_path / "archive.tar.gz.md5").is_file()

    download_file(url, dest, md5=md5, retries=2, **FAST)
    assert len(file_server.requests) == 1

    with dest.open("ab") as stream:  # damaged at rest: the stamp no longer matches, the hash fails
        stream.write(b"garbage")
    download_file(url, dest, md5=md5, retries=2, **FAST)
    assert len(file_server.gets()) == 2
    assert _md5(dest) == md5


def test_persistent_failure_raises_after_retries_and_keeps_the_part(file_server, tmp_path):
    url, md5 = file_server.serve("archive.gz", _random_bytes(20_000))
    file_server.cut_every_get["archive.gz"] = 1_000
    dest = tmp_path / "archive.tar.gz"
    part = tmp_path / "archive.tar.gz.part"

    with pytest.raises(DownloadError) as raised:
        download_file(url, dest, md5=md5, retries=3, **FAST)

    message = str(raised.value)
    assert url in message and "3000 bytes" in message and "re-run" in message
    assert file_server.gets() == [None, "bytes=1000-", "bytes=2000-"]
    assert part.stat().st_size == 3_000 and not dest.exists()

    del file_server.cut_every_get["archive.gz"]  # the link recovers: a re-run resumes the kept part
    download_file(url, dest, md5=md5, retries=3, **FAST)
    assert file_server.gets()[-1] == "bytes=3000-"
    assert _md5(dest) == md5


def test_missing_url_fails_at_once(file_server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{file_server.base_url}/nope.gz", tmp_path / "nope.tar.gz", retries=5, **FAST)
    assert len(file_server.gets()) == 1


def _unsafe_member(kind: str) -> tarfile.TarInfo:
    if kind == "parent":
        return tarfile.TarInfo("../evil.png")
    if kind == "absolute":
        return tarfile.TarInfo("/etc/x")
    info = tarfile.TarInfo("images/link.png")
    if kind == "fifo":
        info.type = tarfile.FIFOTYPE
        return info
    info.type = tarfile.SYMTYPE
    info.linkname = {"symlink_absolute": "/etc/passwd", "symlink_relative": "../../../outside"}[kind]
    return info


@pytest.mark.parametrize("kind", ["parent", "absolute", "symlink_absolute", "symlink_relative", "fifo"])
def test_safe_extract_refuses_unsafe_members(tmp_path, kind):
    archive = tmp_path / "images_001.tar.gz"
    unsafe = _unsafe_member(kind)
    with tarfile.open(archive, "w:gz") as tar:
        safe_payload = b"\x89PNG fine"  # a harmless member first: it must not be extracted either
        safe = tarfile.TarInfo("images/00000001_000.png")
        safe.size = len(safe_payload)
        tar.addfile(safe, io.BytesIO(safe_payload))
        if unsafe.isreg():
            unsafe.size = len(b"evil")
        tar.addfile(unsafe, io.BytesIO(b"evil") if unsafe.isreg() else None)
    target = tmp_path / "extract" / "here"
    files_before = set(tmp_path.rglob("*"))

    with pytest.raises(UnsafeArchiveError) as raised:
        safe_extract(archive, target)

    assert str(archive) in str(raised.value) and unsafe.name in str(raised.value)
    assert set(tmp_path.rglob("*")) == files_before  # nothing written, outside or inside


def test_insufficient_disk_space_fails_before_any_download(file_server, tmp_path):
    archives = []
    for number in (1, 2):
        url, md5 = file_server.serve(f"a{number}.gz", _tar_gz(_nih_like_archive(number, 2)))
        archives.append(Archive(name=f"images_{number:03d}.tar.gz", url=url, md5=md5, n_images=2))
    download_dir = tmp_path / "downloads"

    with pytest.raises(InsufficientDiskSpaceError) as raised:
        download_nih(archives, download_dir, tmp_path / "raw", required_margin_bytes=10**18, **FAST)

    assert str(download_dir) in str(raised.value) and "free" in str(raised.value)
    assert file_server.gets() == []
    assert [method for method, _, _ in file_server.requests] == ["HEAD", "HEAD"]
    assert not download_dir.exists()


def test_fetch_metadata_from_a_local_path_and_from_http(file_server, tmp_path):
    csv_text = b"Image Index,Finding Labels\n00000001_000.png,No Finding\n"
    local = tmp_path / "Data_Entry_2017.csv"
    local.write_bytes(csv_text)
    dest = tmp_path / "raw" / "Data_Entry_2017.csv"

    assert fetch_metadata(str(local), dest) == dest
    assert dest.read_bytes() == csv_text

    url, _ = file_server.serve("Data_Entry_2017.csv", csv_text + b"00000002_000.png,Mass\n")
    fetch_metadata(url, dest)
    assert dest.read_bytes() == csv_text + b"00000002_000.png,Mass\n"
    assert sorted(path.name for path in dest.parent.iterdir()) == ["Data_Entry_2017.csv"]

    with pytest.raises(FileNotFoundError, match="missing.csv"):
        fetch_metadata(str(tmp_path / "missing.csv"), dest)


def test_fetch_stage_downloads_extracts_and_records_nih_data(file_server, tmp_path, monkeypatch):
    """`data.source: nih` + `download: true` through the fetch stage, against the local server.

    Only the archive list is swapped (the real MD5s belong to the 42 GB release); download,
    verification, extraction, metadata by URL and the image manifest are the real code.
    """
    import cxr14.data.nih_download as nih_download
    from cxr14.config import config_from_dict
    from cxr14.data.metadata import image_files, load_metadata
    from cxr14.data.sources import fetch
    from tests.conftest import tiny_params

    archives, rows = [], []
    for index, official in enumerate(official_archives(file_server.base_url)[:2]):
        members = _nih_like_archive(first_patient=1 + 10 * index, n_images=3)
        url, md5 = file_server.serve(official.url.rsplit("/", 1)[1], _tar_gz(members))
        archives.append(dataclasses.replace(official, md5=md5, n_images=len(members)))
        rows += [f"{Path(name).name},No Finding,0,{int(Path(name).name[:8])},50,M,PA" for name in members]
    csv = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
    metadata_url, _ = file_server.serve("Data_Entry_2017.csv", (csv + "\n".join(rows) + "\n").encode())
    monkeypatch.setattr(nih_download, "official_archives", lambda base_url: archives)

    nih_folder = tmp_path / "nih"
    cfg = config_from_dict(
        tiny_params(
            **{
                "data.source": "nih",
                "data.nih.path": str(nih_folder),
                "data.nih.download": True,
                "data.nih.base_url": file_server.base_url,
                "data.nih.metadata": metadata_url,
            }
        )
    )
    fetch(cfg, tmp_path / "raw")

    assert not (tmp_path / "raw" / "images").exists()  # nothing copied or linked: a manifest
    paths = image_files(tmp_path / "raw").paths
    assert len(paths) == 6 and all(Path(path).parent == nih_folder.resolve() / "images" for path in paths.values())
    assert len(load_metadata(tmp_path / "raw").frame) == 6
    assert (nih_folder / "archives" / "images_001.tar.gz").is_file()
