"""Warm start (cxr14.warm): a script handed to the resident server behaves as if it ran in its own
interpreter -- arguments, folder, environment, umask, streams, exit status, tracebacks, atexit,
Ctrl-C -- and a server is reused only by callers that would start the same way.

A probe script written here calls `delegate()` like the stage scripts do and reports what it
sees; every case runs it both ways (warm, and `CXR14_WARM=0`) and compares. The servers are real
(`python -m cxr14.warm`), in a socket folder of this module's own, killed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxr14 import warm
from tests.conftest import process_gone

REPOSITORY = Path(__file__).resolve().parent.parent

PROBE = """\
import gc

gc.disable()

from cxr14.warm import delegate

delegate()

import atexit
import json
import os
import sys
import time

mode = sys.argv[1]
atexit.register(lambda: print("atexit ran", flush=True))
print(json.dumps({
    "argv": sys.argv,
    "file": __file__,
    "name": __name__,
    "path0": sys.path[0],
    "path": sys.path,
    "cxr14": __import__("cxr14").__file__,
    "cwd": os.getcwd(),
    "value": os.environ.get("PROBE_VALUE"),
    "io_umask": __import__("cxr14.io").io._UMASK,  # read when cxr14.io is imported: before the line below
    "umask": os.umask(0o022),
    "stdin": sys.stdin.read() if mode != "wait" else "",
    "stdout_line_buffered": sys.stdout.line_buffering,
    "pid": os.getpid(),
    "server": os.getppid(),
    "torch_loaded": "torch" in sys.modules,
}))
sys.stdout.write("no newline at the end")
if mode == "exit3":
    sys.exit(3)
if mode == "raise":
    raise RuntimeError("boom from the probe")
if mode == "wait":
    try:
        open(sys.argv[2], "w").write(str(os.getpid()))
        time.sleep(120)
    finally:
        print("finally ran", flush=True)
"""


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory):
    """The environment of a probe run: this module's own socket folder; its servers end with it."""
    root = tmp_path_factory.mktemp("warm")
    (root / "probe.py").write_text(PROBE)
    runtime = root / "run"
    runtime.mkdir(mode=0o700)
    env = {key: value for key, value in os.environ.items() if key not in (warm.SWITCH, "PROBE_VALUE")}
    env.update(XDG_RUNTIME_DIR=str(runtime), CXR14_WARM_IDLE="120")
    yield root, env
    for log in (runtime / f"cxr14-warm-{os.getuid()}").glob("*.log"):
        for pid in {
            int(line.split("[")[1].split("]")[0]) for line in log.read_text().splitlines() if "serving on" in line
        }:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_probe(
    root: Path, env: dict, mode: str, *, warm_start: bool, umask: int = 0o027, script: Path | None = None, **extra
) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**env, **extra}
    if not warm_start:
        env[warm.SWITCH] = "0"
    work = root / "work"
    work.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(script or root / "probe.py"), mode, "second argument"],
        cwd=work,
        env=env,
        input="from stdin\n",
        capture_output=True,
        text=True,
        umask=umask,
        timeout=300,
    )
    report = json.loads(result.stdout.splitlines()[0])
    return result, report


def test_the_script_runs_in_a_fork_of_the_server_with_the_callers_arguments_folder_environment_and_streams(probe_env):
    root, env = probe_env
    cold, cold_report = run_probe(root, env, "plain", warm_start=False, PROBE_VALUE="caller's value")
    hot, hot_report = run_probe(root, env, "plain", warm_start=True, PROBE_VALUE="caller's value")
    assert cold.returncode == hot.returncode == 0, hot.stderr
    # Inline the probe is the process that was started; warm it is a fork of a server that has torch.
    assert not cold_report["torch_loaded"] and hot_report["torch_loaded"]
    assert hot_report["server"] != os.getpid()
    for key in ("pid", "server", "torch_loaded"):
        cold_report.pop(key), hot_report.pop(key)
    assert hot_report == cold_report
    assert hot_report["umask"] == 0o027 and hot_report["stdin"] == "from stdin\n"
    assert hot_report["name"] == "__main__" and hot_report["path0"] == str(root)
    # Buffered output without a newline and atexit output reach the caller's stdout, in order.
    assert hot.stdout.splitlines()[1:] == cold.stdout.splitlines()[1:] == ["no newline at the endatexit ran"]
    assert hot.stderr == cold.stderr == ""


def test_a_script_of_another_checkout_runs_that_checkout_s_code_in_both_ways(probe_env):
    """DVC runs queued experiments in copies of the repository while the environment's editable
    install points at the workspace: a pipeline script imports its own checkout's cxr14
    (pipeline/_checkout.py), and so does the warm server it starts."""
    root, env = probe_env
    checkout = root / "checkout"
    shutil.copytree(
        Path(warm.__file__).parent, checkout / "src" / "cxr14", ignore=shutil.ignore_patterns("__pycache__")
    )
    (checkout / "pipeline").mkdir()
    shutil.copy(REPOSITORY / "pipeline" / "_checkout.py", checkout / "pipeline")
    script = checkout / "pipeline" / "probe.py"
    script.write_text(PROBE.replace("import gc\n", "import gc\n\nimport _checkout\n", 1))
    own = str(checkout / "src" / "cxr14" / "__init__.py")
    cold, cold_report = run_probe(root, env, "plain", warm_start=False, script=script)
    hot, hot_report = run_probe(root, env, "plain", warm_start=True, script=script)
    assert cold.returncode == hot.returncode == 0, hot.stderr
    assert cold_report["cxr14"] == hot_report["cxr14"] == own
    assert hot_report["torch_loaded"]  # ran in a server, which imported the copy too
    assert cold_report["path"] == hot_report["path"]
    assert hot_report["path"][:2] == [str(script.parent), str(checkout / "src")]
    # The workspace's own scripts keep theirs (the first test compares the rest).
    _, report = run_probe(root, env, "plain", warm_start=True)
    assert report["cxr14"] == warm.__file__.replace("warm.py", "__init__.py")


@pytest.mark.parametrize("mode, status", [("exit3", 3), ("raise", 1)])
def test_exit_status_and_traceback_are_the_scripts(probe_env, mode, status):
    root, env = probe_env
    cold, _ = run_probe(root, env, mode, warm_start=False)
    hot, _ = run_probe(root, env, mode, warm_start=True)
    assert cold.returncode == hot.returncode == status
    assert hot.stdout.splitlines()[1:] == cold.stdout.splitlines()[1:]
    # The same traceback, from the script's own frame (none of the server's frames), or nothing.
    assert hot.stderr == cold.stderr
    assert ("RuntimeError: boom from the probe" in hot.stderr) == (mode == "raise")


def _start_waiting_probe(root: Path, env: dict) -> tuple[subprocess.Popen, int]:
    marker = root / "waiting.pid"
    marker.unlink(missing_ok=True)
    client = subprocess.Popen(
        [sys.executable, str(root / "probe.py"), "wait", str(marker)],
        cwd=root,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(3000):
        if marker.is_file() and marker.read_text():
            return client, int(marker.read_text())
        if client.poll() is not None:
            raise AssertionError(f"probe ended early: {client.communicate()}")
        time.sleep(0.1)
    raise AssertionError("the probe never started")


def _ends(pid: int, polls: int = 300) -> bool:
    """Whether process `pid` is gone (or a zombie) within `polls` tenths of a second."""
    for _ in range(polls):
        if process_gone(pid):
            return True
        time.sleep(0.1)
    return process_gone(pid)


def test_ctrl_c_reaches_the_stage_and_the_caller_dies_of_it(probe_env):
    root, env = probe_env
    client, stage = _start_waiting_probe(root, env)
    assert stage != client.pid  # the stage is the server's fork
    client.send_signal(signal.SIGINT)
    out, err = client.communicate(timeout=60)
    assert client.returncode == -signal.SIGINT, err
    assert "finally ran" in out and "KeyboardInterrupt" in err
    assert _ends(stage)


def test_a_caller_killed_outright_takes_its_stage_along(probe_env):
    root, env = probe_env
    client, stage = _start_waiting_probe(root, env)
    client.kill()  # SIGKILL: nothing to forward; the server sees the connection close
    client.communicate(timeout=60)
    assert _ends(stage)


def test_a_server_serves_only_callers_that_would_start_the_same_way(probe_env):
    root, env = probe_env
    _, first = run_probe(root, env, "plain", warm_start=True)
    _, again = run_probe(root, env, "plain", warm_start=True, MLFLOW_TRACKING_URI="sqlite:///elsewhere.db")
    assert again["server"] == first["server"]  # a per-call setting: same server
    _, threads = run_probe(root, env, "plain", warm_start=True, OMP_NUM_THREADS="1")
    assert threads["torch_loaded"] and threads["server"] != first["server"]  # read when torch loads: its own
    _, private = run_probe(root, env, "plain", warm_start=True, umask=0o077)
    # cxr14.io reads the umask when imported (the server imported it): another umask, another server.
    assert private["io_umask"] == 0o077 and private["server"] != first["server"]


def test_a_starting_server_removes_other_servers_files_unused_for_a_day(probe_env):
    """Each code edit and each queued experiment's copy makes a new key: files of servers that are
    gone and were last used over a day ago are removed; recent ones and live servers' are kept."""
    root, env = probe_env
    _, first = run_probe(root, env, "plain", warm_start=True)
    folder = root / "run" / f"cxr14-warm-{os.getuid()}"
    serving = f"[{first['server']}] serving on"
    key = next(log.stem for log in folder.glob("*.log") if serving in log.read_text())
    live = {f"{key}.log", f"{key}.lock", f"{key}.sock"}
    two_days_ago, an_hour_ago = time.time() - 2 * 86400, time.time() - 3600
    for other, when in (("stale", two_days_ago), ("recent", an_hour_ago)):
        for suffix in (".log", ".lock", ".sock"):  # a server that ended without cleaning up
            (folder / f"{other}{suffix}").write_text("")
        os.utime(folder / f"{other}.log", (when, when))
    for name in live:
        os.utime(folder / name, (two_days_ago, two_days_ago))
    _, report = run_probe(root, env, "plain", warm_start=True, TORCH_PROBE_KEY="a new server")
    assert report["torch_loaded"]
    left = {path.name for path in folder.iterdir()}
    assert not {"stale.log", "stale.lock", "stale.sock"} & left
    assert {"recent.log", "recent.lock", "recent.sock"} <= left
    assert live <= left  # old, but its server answers


def test_an_edited_package_file_changes_the_server_key(monkeypatch):
    before = warm.server_key()
    module = Path(warm.__file__).with_name("errors.py")
    stat = module.stat()
    try:
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert warm.server_key() != before
    finally:
        os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert warm.server_key() == before
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert warm.server_key() != before


def test_interpreter_options_torchrun_and_the_switch_keep_the_script_in_its_own_process(tmp_path):
    script = tmp_path / "where.py"
    script.write_text("from cxr14 import warm\nimport json, sys\nprint(json.dumps(warm.enabled()))\n", encoding="utf-8")
    env = {key: value for key, value in os.environ.items() if key != warm.SWITCH}

    def enabled(*options: str, **extra: str) -> bool:
        command = [sys.executable, *options, str(script)]
        output = subprocess.run(command, env={**env, **extra}, capture_output=True, text=True, check=True).stdout
        return json.loads(output)

    assert enabled()
    assert not enabled("-X", "importtime")
    assert not enabled(CXR14_WARM="0")
    assert not enabled(TORCHELASTIC_RUN_ID="job", LOCAL_RANK="0")


def test_a_server_that_imported_cuda_s_driver_refuses_to_fork():
    """A child forked after CUDA's driver is initialised cannot use CUDA: the server checks its own
    mappings after the imports and does not serve (the callers then run their stages themselves)."""
    assert warm.fork_hazard(Path("/proc/self/maps").read_text()) is None  # this CPU test process
    maps = (
        "7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f20-7f30 r-xp 00000000 08:01 456 /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15\n"
    )
    assert "libcuda.so.550.54.15" in warm.fork_hazard(maps)
    assert warm.fork_hazard(maps.replace("libcuda", "libcudart")) is None  # the runtime alone is inert


def test_a_server_that_cannot_start_leaves_the_stage_to_its_own_process_and_says_so(probe_env):
    root, env = probe_env
    # A new server (its own thread setting) whose start fails: an idle time that is not a number.
    result, report = run_probe(root, env, "plain", warm_start=True, CXR14_WARM_IDLE="soon", OMP_NUM_THREADS="2")
    assert result.returncode == 0 and not report["torch_loaded"]
    assert "warm start unavailable (the warm stage server exited with status 1; see" in result.stderr


def test_a_stuck_server_leaves_the_stage_to_its_own_process_and_never_runs_it_later(probe_env):
    """A server that does not take a stage (here: stopped with SIGSTOP) would leave `dvc repro`
    waiting for ever: the caller gives up after CXR14_WARM_TIMEOUT seconds, says so and runs the
    script itself; the server, woken, sees that the caller is gone and does not run it too."""
    root, env = probe_env
    own = {"TORCH_PROBE_SERVER": "stuck"}  # a server of this test's own (a key variable)
    _result, report = run_probe(root, env, "plain", warm_start=True, **own)
    server = report["server"]
    assert report["torch_loaded"]  # served by a fork of the server
    log = next(
        path
        for path in (root / "run" / f"cxr14-warm-{os.getuid()}").glob("*.log")
        if f"[{server}] serving on" in path.read_text()
    )
    os.kill(server, signal.SIGSTOP)
    try:
        result, report = run_probe(root, env, "plain", warm_start=True, CXR14_WARM_TIMEOUT="1", **own)
    finally:
        os.kill(server, signal.SIGCONT)
    assert result.returncode == 0 and not report["torch_loaded"] and report["server"] != server
    assert "did not take the stage in 1 s: stuck?" in result.stderr and str(log) in result.stderr  # the variable's
    deadline = time.monotonic() + 30
    while "gave up before its stage started" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = log.read_text().splitlines()
    assert any("a caller gave up before its stage started" in line for line in lines), lines
    assert sum(": ended (" in line for line in lines) == 1  # only the first probe ever ran in the server

    # The server itself is fine: the next caller is served by it again.
    result, report = run_probe(root, env, "plain", warm_start=True, **own)
    assert result.returncode == 0 and report["server"] == server and report["torch_loaded"]
