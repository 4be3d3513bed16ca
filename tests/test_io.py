import json
import os
import stat

import pytest

from cxr14.io import OutputNotWritableError, atomic_directory, atomic_write_json, staged_outputs


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


def _outputs(tmp_path):
    """Two files and a folder with old content; returns (paths, {path: bytes})."""
    metrics, table, figures = tmp_path / "m.json", tmp_path / "tables" / "t.csv", tmp_path / "figures" / "cnn"
    figures.mkdir(parents=True)
    table.parent.mkdir()
    for path, content in ((metrics, b"old m"), (table, b"old t"), (figures / "a.png", b"old a")):
        path.write_bytes(content)
    return [metrics, table, figures]


def _files(folder):
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_staged_outputs_replace_every_output_together(tmp_path):
    metrics, table, figures = _outputs(tmp_path)
    with staged_outputs([metrics, table, figures]) as stage:
        atomic_write_json(stage.path(metrics), {"new": 1})
        stage.path(table).write_bytes(b"new t")
        assert stage.path(table).name == "t.csv"  # staged under its own name (MLflow artifacts keep it)
        stage.path(figures).mkdir()
        (stage.path(figures) / "b.png").write_bytes(b"new b")
        assert metrics.read_bytes() == b"old m" and (figures / "a.png").is_file()  # nothing replaced yet
    assert _files(tmp_path) == {
        "m.json": b'{\n  "new": 1\n}\n',
        "tables/t.csv": b"new t",
        "figures/cnn/b.png": b"new b",
    }  # no staging folder left
    assert stat.S_IMODE(os.stat(figures).st_mode) == 0o777 & ~_umask()


@pytest.mark.parametrize("failure", ["the stage raises", "an output is never written"])
def test_a_failure_mid_stage_leaves_every_old_output(tmp_path, failure):
    outputs = _outputs(tmp_path)
    before = _files(tmp_path)
    message = "model crashed" if failure == "the stage raises" else "did not write .*t.csv"
    with pytest.raises(RuntimeError, match=message):
        with staged_outputs(outputs) as stage:
            stage.path(outputs[0]).write_bytes(b"new m")
            stage.path(outputs[2]).mkdir()
            if failure == "the stage raises":
                raise RuntimeError("model crashed")
    assert _files(tmp_path) == before
    assert not list(tmp_path.rglob(".*"))  # no staging folder left


def test_an_unwritable_output_folder_fails_before_the_stage_runs(tmp_path):
    outputs = _outputs(tmp_path)
    before = _files(tmp_path)
    (tmp_path / "blocked").write_bytes(b"a file where a folder should be")
    ran = []
    with pytest.raises(OutputNotWritableError, match=f"{tmp_path / 'blocked'} is a file, not a folder"):
        with staged_outputs([*outputs, tmp_path / "blocked" / "figures" / "cnn"]):
            ran.append(True)
    assert not ran
    assert _files(tmp_path) == {**before, "blocked": b"a file where a folder should be"}
    assert not list(tmp_path.rglob(".*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_a_read_only_old_folder_fails_before_the_stage_runs(tmp_path):
    outputs = _outputs(tmp_path)
    before = _files(tmp_path)
    outputs[2].chmod(0o500)
    try:
        with pytest.raises(OutputNotWritableError, match=f"folder {outputs[2]} is not writable"):
            with staged_outputs(outputs):
                pass
    finally:
        outputs[2].chmod(0o700)
    assert _files(tmp_path) == before and not list(tmp_path.rglob(".*"))
