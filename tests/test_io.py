import json
import os
import stat

import pytest

from cxr14.io import atomic_directory, atomic_write_json


def test_atomic_json_is_stable_and_readable_by_others(tmp_path):
    target = tmp_path / "out" / "m.json"
    atomic_write_json(target, {"b": 1, "a": 0.5})
    assert target.read_text() == json.dumps({"a": 0.5, "b": 1}, indent=2) + "\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~_umask()
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]  # no temp file left


def test_failed_directory_leaves_the_old_one_untouched(tmp_path):
    target = tmp_path / "cache"
    with atomic_directory(target) as staging:
        (staging / "a.npy").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "a.npy").write_bytes(b"half")
            raise RuntimeError("worker died")
    assert (target / "a.npy").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
