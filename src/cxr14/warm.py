"""Warm start for the heavy stage scripts: one resident interpreter that has imported torch, MLflow,
timm, pandas and the project once, and forks a fresh child for every stage command.

Why: a `dvc repro` of the demo runs ~20 stage processes that each import torch, MLflow (with its
SQLite store), pandas, scipy and often timm before doing a few seconds of work -- 2.5-4 s a process
on a 2-core CPU, a third of the demo. With warm start the first heavy stage pays the imports in a
server process; every later stage script connects to it and is run by a fork of that interpreter.

    python pipeline/evaluate.py cnn ...      # as in dvc.yaml: unchanged
      -> delegate(): connect to the server for this interpreter + code + environment
         (start it if there is none), hand over argv, working folder, environment, umask and
         the terminal's stdin/stdout/stderr, forward Ctrl-C/TERM to the child, exit with its status
      -> server: fork; the child takes those over and runs the script as `__main__`, then ends
         like any interpreter (atexit handlers, non-daemon threads, buffered output)

What stays the same: the script, its arguments, environment and working folder, the files it
reads and writes, its output streams and exit status (a signal death is re-raised), and
therefore its results (tests compare a stage's outputs and messages with and without it).
What differs: the stage's process is not a child of `dvc`, so per-process measurements of the
tree under `dvc` (benchmarks/scale.py, benchmarks/memory.py) turn warm start off; warnings that
a library emits while being imported go to the server's log, once, instead of every stage's
stderr.

A server serves only what it was started for: the same Python executable and interpreter flags,
the same files of the cxr14 package (path, size, modification time -- an edited module starts a
new server), the same module search path, which the server starts with (a checkout's own src/
first: pipeline/_checkout.py), and installed packages (its folders' modification times), the same
CPU affinity, cgroup and umask, and the same values of the environment variables read when native
libraries and Python start (threads: OMP_/MKL_/OPENBLAS_; kernels: ATEN_/ONEDNN_; PYTHON*, LANG/LC_*,
CUDA_*, TORCH*, MLflow's logging, HOME, TMPDIR, ...). Anything else (an experiment's params, DVC's
variables) is per stage. The server imports but never computes (no thread pool of torch is
started before a fork; the stages' own DataLoader/multiprocessing workers fork the same way), runs
only for its user (its socket lives in a 0700 folder and it checks the peer's uid), and exits
after `CXR14_WARM_IDLE` seconds (default 60) without a stage.

Off: `CXR14_WARM=0` runs every stage in its own interpreter, as without this module (also
automatic under torchrun, with interpreter options such as `-X importtime`, or off Linux).
If the server cannot be started, or does not take the stage within `CXR14_WARM_TIMEOUT` seconds
(default 60; it would otherwise leave `dvc repro` waiting for ever), the stage says so on stderr
and runs in its own process; a server that wakes up later sees that its caller gave up and does
not run the stage.
Server logs: `$XDG_RUNTIME_DIR` (or the temp folder) `/cxr14-warm-<uid>/<key>.log`; a server that
starts removes other keys' files unused for a day whose server is gone.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWITCH = "CXR14_WARM"
IDLE_VARIABLE = "CXR14_WARM_IDLE"
DEFAULT_IDLE_SECONDS = 60.0
# How long a caller waits for a server to take its stage (to answer with the forked child's pid);
# a live server takes one in milliseconds, so a server that does not is stuck (stopped, wedged).
TAKE_VARIABLE = "CXR14_WARM_TIMEOUT"
DEFAULT_TAKE_SECONDS = 60.0
START_TIMEOUT_SECONDS = 300.0
STALE_SECONDS = 86400.0  # another key's files unused this long, with no server, are removed

# Environment read when the interpreter and native libraries start (thread pools, kernels,
# allocators, locale, paths): a server started under other values would run stages differently.
KEY_PREFIXES = (
    "PYTHON",
    "OMP_",
    "GOMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "BLIS_",
    "VECLIB_",
    "NUMEXPR_",
    "ATEN_",
    "ONEDNN_",
    "DNNL_",
    "TORCH",
    "PYTORCH_",
    "CUDA_",
    "NVIDIA_",
    "HIP_",
    "ROCM_",
    "LD_",
    "MALLOC_",
    "JEMALLOC_",
    "LC_",
    "MPL",
    "TIMM_",
    "HF_",
    "SSL_",
    "REQUESTS_",
)
KEY_NAMES = (
    "LANG",
    "LANGUAGE",
    "HOME",
    "TMPDIR",
    "TEMP",
    "TMP",
    "TZ",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    # MLflow's, read when it is imported (the others, such as the tracking URI, are read per call)
    "MLFLOW_LOGGING_LEVEL",
    "MLFLOW_CONFIGURE_LOGGING",
    "MLFLOW_DISABLE_TELEMETRY",
    "DO_NOT_TRACK",
)

# What the heavy stages import, loaded once by the server (a module missing here is imported by
# the stage itself, as without warm start).
PRELOAD = (
    "numpy",
    "torch",
    "torch._dynamo",
    "torch.onnx",
    "pandas",
    "scipy.stats",
    "sklearn.metrics",
    "matplotlib",
    "matplotlib.pyplot",
    "PIL.Image",
    "timm",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
)  # and every module of cxr14 itself


def enabled() -> bool:
    """Whether this process may hand its script to a server (see the module's docstring)."""
    if os.environ.get(SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if sys.platform != "linux" or not hasattr(socket, "send_fds"):
        return False
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        return False  # torchrun's agent watches its workers' own processes
    # `python [options] script.py ...`: interpreter options (-X importtime, -W, -O, ...) are the user's.
    orig = getattr(sys, "orig_argv", [])
    return len(orig) >= 2 and os.path.abspath(orig[1]) == os.path.abspath(sys.argv[0])


def delegate() -> None:
    """Run this script in a warm server's child and exit with its status; return (and let the
    script run here) when warm start is off or unavailable. Call it first, before heavy imports."""
    if not enabled():
        return
    script = os.path.abspath(sys.argv[0])
    try:
        folder = _private_folder()
        key = server_key()
        connection = _connect_or_start(folder, key)
    except OSError as error:
        print(f"cxr14: warm start unavailable ({error}); running the stage in this process", file=sys.stderr)
        return
    log_path, take_seconds = folder / f"{key}.log", _take_seconds()
    status = _run_remote(connection, script, log_path, take_seconds)
    if status is None:
        print(
            f"cxr14: warm start unavailable (the warm stage server did not take the stage in "
            f"{take_seconds:g} s: stuck? see {log_path}); running the stage in this process",
            file=sys.stderr,
        )
        return
    sys.exit(status)


def _take_seconds() -> float:
    value = os.environ.get(TAKE_VARIABLE, "")
    try:
        return float(value) if value.strip() else DEFAULT_TAKE_SECONDS
    except ValueError:
        return DEFAULT_TAKE_SECONDS


# --- which server ------------------------------------------------------------------------------


def _private_folder() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    folder = Path(base) / f"cxr14-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{folder} is not private to this user (owner {info.st_uid}, mode {info.st_mode & 0o777:o})")
    return folder


def _package_files() -> list[tuple[str, int, int]]:
    root = Path(__file__).resolve().parent
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        for name in sorted(names):
            info = os.stat(os.path.join(directory, name))
            files.append((os.path.relpath(os.path.join(directory, name), root), info.st_size, info.st_mtime_ns))
    return files


def _site_folders() -> list[tuple[str, int]]:
    stamps = []
    for entry in sys.path[1:]:  # [0] is the script's folder, set per stage
        try:
            stamps.append((entry, os.stat(entry).st_mtime_ns))
        except OSError:
            stamps.append((entry, -1))
    return stamps


def _cgroup() -> str:
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return ""


def server_key() -> str:
    """A server is shared only by stages that would start the same way (module docstring)."""
    environment = {
        name: value for name, value in os.environ.items() if name.startswith(KEY_PREFIXES) or name in KEY_NAMES
    }
    identity = {
        "python": [sys.executable, sys.version, repr(sys.flags)],
        "package": [str(Path(__file__).resolve().parent), _package_files()],
        "site": _site_folders(),
        "environment": sorted(environment.items()),
        "cpus": sorted(os.sched_getaffinity(0)),
        "umask": _umask(),  # cxr14.io reads it once, at import, for the modes of the files it writes
        "cgroup": _cgroup(),
        "uid": os.getuid(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


# The server's command: `python -m cxr14.warm --serve SOCKET`, but with the caller's module search path
# (its sys.path[0] is the script's folder, set per stage), so that it imports the same cxr14 -- a
# checkout's own src/ (pipeline/_checkout.py), not necessarily the installed one -- and the same
# libraries as the caller, whose key names those folders.
_SERVE = (
    "import json, sys; sys.path[1:] = json.loads(sys.argv[1]); "
    "from cxr14.warm import main; main(['--serve', sys.argv[2]])"
)


def _connect(path: Path) -> socket.socket | None:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(str(path))
    except (FileNotFoundError, ConnectionRefusedError):
        client.close()
        return None
    return client


def _connect_or_start(folder: Path, key: str) -> socket.socket:
    path = folder / f"{key}.sock"
    connection = _connect(path)
    if connection is not None:
        return connection
    import fcntl

    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter per key; the others wait here, then connect
        connection = _connect(path)
        if connection is not None:
            return connection
        path.unlink(missing_ok=True)  # a server that died without cleaning up
        _prune(folder, key)
        log_path = folder / f"{key}.log"
        with open(log_path, "wb") as log:  # this server's log only
            server = subprocess.Popen(
                [sys.executable, "-c", _SERVE, json.dumps(sys.path[1:]), str(path)],
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # not in the terminal's process group: Ctrl-C is forwarded
                close_fds=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            connection = _connect(path)
            if connection is not None:
                return connection
            if server.poll() is not None:
                raise OSError(f"the warm stage server exited with status {server.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                server.kill()
                raise OSError(f"the warm stage server did not start in {START_TIMEOUT_SECONDS:.0f} s; see {log_path}")
            time.sleep(0.05)


def _prune(folder: Path, key: str, max_age_seconds: float = STALE_SECONDS) -> None:
    """Remove other keys' files (log, lock, socket) untouched for `max_age_seconds` and with no
    server answering: each code edit, and each queued experiment's copy, makes a new key."""
    import fcntl

    cutoff = time.time() - max_age_seconds
    for log in folder.glob("*.log"):
        other = log.name.removesuffix(".log")
        try:
            if other == key or log.stat().st_mtime > cutoff:
                continue
            with open(folder / f"{other}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a starter holds it: not stale
                live = _connect(folder / f"{other}.sock")
                if live is not None:
                    live.close()
                    continue
                for name in (f"{other}.sock", f"{other}.log", f"{other}.lock"):
                    (folder / name).unlink(missing_ok=True)
        except OSError:
            continue


# --- the client's side of one stage ---------------------------------------------------------------


def _send_request(connection: socket.socket, request: dict) -> None:
    payload = json.dumps(request).encode()
    streams = [fd for fd in (0, 1, 2) if _is_open(fd)]
    header = len(payload).to_bytes(8, "big") + bytes(fd in streams for fd in (0, 1, 2))
    socket.send_fds(connection, [header], streams)
    connection.sendall(payload)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _run_remote(connection: socket.socket, script: str, log_path: Path, take_seconds: float) -> int | None:
    """Hand the stage to the server and follow it: its exit status (a signal death is re-raised
    here), or None when the server did not take it within `take_seconds` (connection closed, this
    process's signal handlers as before, a signal that arrived meanwhile delivered to it)."""
    request = _stage_request(script)
    child: list[int] = []
    pending: list[int] = []  # signals that came before the stage's pid: forwarded once it is known

    def forward(signum, _frame):
        if not child:
            pending.append(signum)
            return
        try:
            os.kill(child[0], signum)
        except ProcessLookupError:
            pass

    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    previous = {signum: signal.signal(signum, forward) for signum in forwarded}
    replies = connection.makefile("r")
    connection.settimeout(take_seconds)
    try:
        # The server says it has accepted before the streams are sent: file descriptors in flight
        # to a server that never takes them would keep this process's pipes open after it is gone.
        greeting = json.loads(replies.readline() or "{}")
        if "ready" not in greeting:
            problem = greeting.get("error", "it closed the connection")
            print(f"cxr14: warm stage server: {problem} (see {log_path})", file=sys.stderr)
            return 1
        _send_request(connection, request)
        first = replies.readline()
    except TimeoutError:
        connection.close()
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for held in pending:
            os.kill(os.getpid(), held)
        return None
    connection.settimeout(None)
    for line in itertools.chain([first] if first else [], replies):
        reply = json.loads(line)
        if "pid" in reply:
            child.append(reply["pid"])
            for held in pending:
                forward(held, None)
        elif "exit" in reply:
            return int(reply["exit"])
        elif "signal" in reply:
            death = int(reply["signal"])
            signal.signal(death, signal.SIG_DFL)
            os.kill(os.getpid(), death)  # die the way the stage died
            return 128 + death
        elif "error" in reply:
            print(f"cxr14: warm stage server: {reply['error']} (see {log_path})", file=sys.stderr)
            return 1
    print(f"cxr14: the warm stage server ended before the stage did (see {log_path})", file=sys.stderr)
    return 1


def _stage_request(script: str) -> dict:
    """What the server's child takes over from this process (see `_become_stage`)."""
    return {
        "script": script,
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "environment": dict(os.environ),
        "umask": _umask(),
    }


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the server -----------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {message}", file=sys.stderr, flush=True)


def _preload() -> None:
    import gc
    import importlib

    gc.disable()
    started = time.perf_counter()
    import pkgutil

    import cxr14

    own = [
        module.name
        for module in pkgutil.walk_packages(cxr14.__path__, "cxr14.")
        if module.name not in ("cxr14.warm", "cxr14.__main__")
    ]
    for name in (*PRELOAD, *own):
        try:
            importlib.import_module(name)
        except Exception as error:  # the stage that needs it will import it and report the error itself
            _log(f"preload {name}: {type(error).__name__}: {error}")
    gc.freeze()  # children share these pages; their collections skip them
    gc.enable()
    _log(f"preloaded {len(PRELOAD) + len(own)} modules in {time.perf_counter() - started:.1f} s")


def fork_hazard(maps: str) -> str | None:
    """Why forking this process would break its children, from /proc/self/maps: CUDA's driver
    (libcuda) loaded means a library initialised CUDA while being imported, and a forked child
    cannot use CUDA then. None when nothing is known to be unsafe."""
    for line in maps.splitlines():
        name = line.rsplit(" ", 1)[-1]
        if Path(name).name.startswith("libcuda.so"):
            return f"CUDA's driver ({name}) was initialised while importing"
    return None


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = connection.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionError("the client closed the connection mid-request")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _receive_request(connection: socket.socket) -> tuple[dict, list[int | None]]:
    header, fds, _flags, _address = socket.recv_fds(connection, 11, 3)
    if len(header) < 11:
        header += _receive_exactly(connection, 11 - len(header))
    present = list(header[8:11])
    received = iter(fds)
    streams = [next(received) if flag else None for flag in present]
    request = json.loads(_receive_exactly(connection, int.from_bytes(header[:8], "big")))
    return request, streams


def _hung_up(connection: socket.socket) -> bool:
    """Whether the client closed its end: it sends nothing after its request, so anything to read
    is the end of the stream."""
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _close_streams(streams: list[int | None]) -> None:
    for fd in streams:
        if fd is not None:
            os.close(fd)


def _peer_uid(connection: socket.socket) -> int:
    import struct

    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


def _reply(connection: socket.socket, **message) -> None:
    try:
        connection.sendall((json.dumps(message) + "\n").encode())
    except OSError:
        pass  # the client is gone; the child was or will be told


def serve(path: Path, idle_seconds: float) -> dict | None:
    """Serve stage requests until idle. Returns None in the server when it ends, and the request in
    a forked child, which then runs the request's script (see `main`)."""
    _preload()
    unsafe = fork_hazard(Path("/proc/self/maps").read_text())
    if unsafe:
        _log(f"not serving: {unsafe}")
        sys.exit(3)  # the callers run their stages in their own processes, saying why
    server = _Server(path)
    try:
        return server.run(idle_seconds)
    finally:
        if not server.in_child:
            server.remove_socket()
            _log("idle; exiting")


class _Server:
    """One listening socket, the running stages' connections, and SIGCHLD as a wake-up fd."""

    def __init__(self, path: Path):
        self.path = path
        self.in_child = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        staging = path.with_name(f"{path.name}.{os.getpid()}")
        staging.unlink(missing_ok=True)
        self.listener.bind(str(staging))
        self.listener.listen(64)
        os.replace(staging, path)  # clients see the socket only once it accepts
        self.identity = os.stat(path).st_ino
        _log(f"serving on {path}")
        self.wake_reader, self.wake_writer = socket.socketpair()
        for end in (self.wake_reader, self.wake_writer):
            end.setblocking(False)
        signal.set_wakeup_fd(self.wake_writer.fileno())
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD writes to the wake-up fd
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.wake_reader, selectors.EVENT_READ, "wake")
        self.children: dict[int, socket.socket] = {}
        self.last_activity = time.monotonic()

    def run(self, idle_seconds: float) -> dict | None:
        while True:
            deadline = self.last_activity + idle_seconds
            events = self.selector.select(None if self.children else max(0.0, deadline - time.monotonic()))
            if not events and not self.children and time.monotonic() >= deadline:
                return None
            for selected, _mask in events:
                if selected.data == "accept":
                    request = self.accept()
                    if request is not None:  # in the forked child
                        return request
                elif selected.data == "wake":
                    self.drain_wake_ups()
                else:
                    self.client_gone(selected.data, selected.fileobj)
            self.reap()

    def accept(self) -> dict | None:
        connection, _ = self.listener.accept()
        self.last_activity = time.monotonic()
        try:
            connection.settimeout(30)
            if _peer_uid(connection) != os.getuid():
                raise PermissionError("a client of another user")
            connection.sendall(b'{"ready": true}\n')  # now the caller hands over its streams
            request, streams = _receive_request(connection)
            connection.settimeout(None)
        except ConnectionError as error:  # BrokenPipeError too: the caller closed its end
            _log(f"a caller gave up before its stage started ({error})")
            connection.close()
            return None
        except (OSError, ValueError) as error:
            _log(f"bad request: {error}")
            _reply(connection, error=str(error))
            connection.close()
            return None
        if _hung_up(connection):  # it waited longer than its take timeout (this server was stuck)
            _log(f"a caller gave up before its stage started (not running {' '.join(request['argv'])})")
            _close_streams(streams)
            connection.close()
            return None
        pid = os.fork()
        if pid == 0:
            self.in_child = True
            self.close_in_child()
            connection.close()
            _become_stage(request, streams)
            return request
        _close_streams(streams)  # the child has them
        self.children[pid] = connection
        self.selector.register(connection, selectors.EVENT_READ, pid)
        _reply(connection, pid=pid)
        _log(f"stage {pid}: {' '.join(request['argv'])} (in {request['cwd']})")
        return None

    def drain_wake_ups(self) -> None:
        try:
            while self.wake_reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def client_gone(self, pid: int, connection) -> None:
        """A stage's connection became readable: its client is gone (it sends nothing after the
        request), killed with a signal it could not forward. The stage goes the same way."""
        self.selector.unregister(connection)
        if pid in self.children:
            _log(f"stage {pid}: its client went away; killing it")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self.children.pop(pid)
            if os.WIFSIGNALED(status):
                _reply(connection, signal=os.WTERMSIG(status))
            else:
                _reply(connection, exit=os.waitstatus_to_exitcode(status))
            try:
                self.selector.unregister(connection)
            except (KeyError, ValueError):
                pass
            connection.close()
            self.last_activity = time.monotonic()
            _log(f"stage {pid}: ended ({os.waitstatus_to_exitcode(status)})")

    def close_in_child(self) -> None:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.selector.close()
        for sock in (self.listener, self.wake_reader, self.wake_writer, *self.children.values()):
            sock.close()

    def remove_socket(self) -> None:
        """Remove the socket if it is still this server's (a newer server may have replaced it)."""
        try:
            if os.stat(self.path).st_ino == self.identity:
                self.path.unlink()
        except FileNotFoundError:
            pass


def _become_stage(request: dict, streams: list[int | None]) -> None:
    """In the forked child: take over the client's streams, folder, environment and arguments."""
    for target, fd in enumerate(streams):
        if fd is None:
            fd = os.open(os.devnull, os.O_RDWR)
        os.dup2(fd, target)
        if fd > 2:
            os.close(fd)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the server's end is ours
    except (OSError, AttributeError):
        pass
    os.setsid()
    os.chdir(request["cwd"])
    os.umask(int(request["umask"]))
    os.environ.clear()
    os.environ.update(request["environment"])
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(request["script"])
    # As a fresh interpreter would: stdout line-buffered only on a terminal, stderr line-buffered.
    for stream, fd in ((sys.stdout, 1), (sys.stderr, 2)):
        if isinstance(stream, io.TextIOWrapper):
            stream.flush()
            stream.reconfigure(line_buffering=fd == 2 or os.isatty(fd))


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m cxr14.warm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", required=True, metavar="SOCKET", help="the socket to serve stage scripts on")
    args = parser.parse_args(argv)
    idle = float(os.environ.get(IDLE_VARIABLE, DEFAULT_IDLE_SECONDS))
    request = serve(Path(args.serve), idle)
    if request is None:
        return
    _run_as_main(request["script"])


def _run_as_main(script: str) -> None:
    """Run `script` as `__main__` and end as `python script` would: an uncaught exception's
    traceback (from the script's frame on) then exit status 1, or for Ctrl-C death by SIGINT
    after the atexit handlers, which is what the interpreter does for its main script."""
    import atexit
    import runpy

    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit:
        raise
    except BaseException as error:
        trace = error.__traceback__
        while trace is not None and trace.tb_frame.f_code.co_filename != script:
            trace = trace.tb_next
        if trace is not None:
            error.with_traceback(trace)  # what the default hook prints (it prefers the exception's own)
        sys.excepthook(type(error), error, error.__traceback__)
        if not isinstance(error, KeyboardInterrupt):
            sys.exit(1)
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    main()
