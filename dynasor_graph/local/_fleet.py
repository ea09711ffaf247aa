"""Several local vLLM replicas behind ``vllm-router``: ``dynasor-graph serve-local --replicas N``.

:class:`Fleet` starts N :class:`LocalServer` replicas on free loopback ports and the router of the
vLLM project (the ``vllm-router`` package, in the ``local`` extra) in front of them on one port.
With the default ``consistent_hash`` policy the router hashes the ``X-Session-ID`` header, which
every request of a program carries (its thread's ``thread_id``, else the program's own
``session_id``): all the requests of one program reach the replica that holds its prefix in
cache.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from .._endpoint import Endpoint
from .._errors import LocalServerError
from ._model import cache_dir
from ._server import (
    LocalServer,
    _die_with_parent,
    _tail,
    _terminate_group,
    find_running,
    free_port,
)

ROUTER_POLICIES = ("consistent_hash", "round_robin", "cache_aware", "power_of_two", "random")
"""Policies of ``vllm-router`` that ``serve-local --router-policy`` offers."""

_INSTALL_ROUTER = "pip install 'dynasor-graph[local]'"


def router_binary() -> str:
    """The ``vllm-router`` command: next to this Python (its venv's ``bin``), else on PATH."""
    found = shutil.which("vllm-router", path=str(Path(sys.executable).parent))
    found = found or shutil.which("vllm-router")
    if found is None:
        raise LocalServerError(f"serving several replicas needs vllm-router: `{_INSTALL_ROUTER}`")
    return found


class Router:
    """``vllm-router`` on 127.0.0.1 in front of ``worker_urls`` (``http://host:port``, no
    ``/v1``), as a subprocess; a context manager. It answers once a worker's ``/health`` does."""

    def __init__(
        self,
        worker_urls: Sequence[str],
        port: int | None = None,
        *,
        policy: str = "consistent_hash",
        startup_timeout_s: float = 600,
        log_path: Path | None = None,
    ) -> None:
        if policy not in ROUTER_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(ROUTER_POLICIES)}")
        self.worker_urls = list(worker_urls)
        self.port = port if port is not None else free_port()
        self.policy = policy
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or cache_dir() / "logs" / f"router-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Router:
        """Start the router and wait until it answers ``GET /v1/models``."""
        if self.running:
            return self
        self.stop()
        binary = router_binary()
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("wb")
        except OSError as exc:
            raise LocalServerError(f"cannot write the router log {self.log_path}: {exc}") from exc
        command = [
            binary,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--worker-urls", *self.worker_urls,
            "--policy", self.policy,
            # its metrics port defaults to 29000 for every router: a second one would panic
            "--prometheus-host", "127.0.0.1",
            "--prometheus-port", str(free_port()),
            "--worker-startup-check-interval", "1",
            # retries belong to the graph's RetryPolicy, where a retried call is counted once
            "--disable-retries",
            "--request-timeout-secs", "3600",
            "--log-level", "warning",
        ]
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                start_new_session=True,
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
        while not find_running(self.api_base):
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process is not None else None
                raise LocalServerError(f"vllm-router exited (status {code}) while starting; "
                                       f"end of {self.log_path}:\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise LocalServerError(
                    f"vllm-router did not answer within {self.startup_timeout_s:.0f} s; "
                    f"end of {self.log_path}:\n{_tail(self.log_path)}")
            time.sleep(0.3)

    def stop(self) -> None:
        """Stop the router (SIGTERM, then SIGKILL after ~30 s). Idempotent."""
        if self._process is not None:
            _terminate_group(self._process)
            self._process = None
            atexit.unregister(self.stop)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Router:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class _Replica:
    """One :class:`LocalServer` started and stopped by a thread of its own that lives as long as
    the server: the server dies with the thread that started it (PR_SET_PDEATHSIG), so that
    thread must not be a short-lived one, and replicas start in parallel."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"replica-{server.port}",
                                        daemon=True)

    def _run(self) -> None:
        try:
            self.server.start()
        except BaseException as exc:  # handed to the starting thread
            self.error = exc
        self._ready.set()
        self._release.wait()
        self.server.stop()

    def start(self) -> None:
        self._thread.start()

    def wait_ready(self) -> None:
        self._ready.wait()

    def stop(self) -> None:
        self._release.set()
        if not self._ready.is_set():
            self.server.stop()  # still starting: end it now rather than once it is ready

    def join(self) -> None:
        self._thread.join()


class Fleet:
    """N local vLLM replicas behind ``vllm-router`` on 127.0.0.1, as one OpenAI base URL.

    Use as a context manager or call :meth:`start` and :meth:`stop` (from a thread that lives
    as long as the fleet: the router dies with the thread that started it). ``extra_args`` go
    to every replica (``--scheduling-policy priority``: each replica orders its own waiting
    queue by the ``priority`` every request carries). ``replicas`` holds
    the :class:`LocalServer` of each replica (their ``/metrics`` are per replica; the router's
    ``/metrics`` answers with one replica's).
    """

    def __init__(
        self,
        replicas: int = 2,
        port: int | None = None,
        *,
        policy: str = "consistent_hash",
        classifier: bool = False,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 600,
        log_path: Path | None = None,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        if policy not in ROUTER_POLICIES:
            raise ValueError(f"policy must be one of {', '.join(ROUTER_POLICIES)}")
        self.replicas = [LocalServer(startup_timeout_s=startup_timeout_s, classifier=classifier,
                                     extra_args=extra_args)
                         for _ in range(replicas)]
        self.served_name = self.replicas[0].served_name
        self._router = Router([server.base_url for server in self.replicas], port,
                              policy=policy, startup_timeout_s=startup_timeout_s,
                              log_path=log_path)
        self.port = self._router.port
        self.policy = policy
        self._keepers: list[_Replica] = []

    def __repr__(self) -> str:
        return f"Fleet(api_base={self.api_base!r}, replicas={len(self.replicas)})"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """The router's OpenAI-compatible API, ``http://127.0.0.1:PORT/v1``."""
        return f"{self.base_url}/v1"

    @property
    def running(self) -> bool:
        """True while the router and every replica are alive."""
        return self._router.running and all(server.running for server in self.replicas)

    def endpoint(self) -> Endpoint:
        return Endpoint(model=f"hosted_vllm/{self.served_name}", api_base=self.api_base)

    def start(self) -> Fleet:
        """Start the replicas (in parallel), then the router; return once the router answers.

        Raises :class:`LocalServerError` if a replica or the router fails to start; whatever
        did start is stopped again.
        """
        if self._router.running:
            return self
        router_binary()  # fail before starting anything
        try:
            self._keepers = [_Replica(server) for server in self.replicas]
            atexit.register(self.stop)
            for keeper in self._keepers:
                keeper.start()
            for keeper in self._keepers:
                keeper.wait_ready()
            for keeper in self._keepers:
                if keeper.error is not None:
                    raise keeper.error
            self._router.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the router, then every replica (in parallel). Idempotent."""
        self._router.stop()
        for keeper in self._keepers:
            keeper.stop()
        for keeper in self._keepers:
            keeper.join()
        self._keepers = []
        atexit.unregister(self.stop)

    def __enter__(self) -> Fleet:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve_fleet_forever(replicas: int, port: int | None = None, *,
                        policy: str = "consistent_hash", classifier: bool = False,
                        extra_args: Sequence[str] = ()) -> None:
    """Run :class:`Fleet` until Ctrl-C or SIGTERM (``dynasor-graph serve-local --replicas N``).

    Prints exactly one line to stdout, the router's ``/v1`` API base, once it answers; each
    replica's URL goes to stderr.
    """

    def _interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    fleet = Fleet(replicas, port, policy=policy, classifier=classifier, extra_args=extra_args)
    try:
        fleet.start()
        for index, server in enumerate(fleet.replicas):
            print(f"replica {index}: {server.api_base} (log {server.log_path})",
                  file=sys.stderr, flush=True)
        print(fleet.api_base, flush=True)
        while fleet.running:
            time.sleep(0.5)
        raise LocalServerError("a local vLLM replica or the router exited unexpectedly")
    except KeyboardInterrupt:
        pass
    finally:
        # a second Ctrl-C must not cut the stop short and orphan replicas
        with contextlib.suppress(ValueError):
            for sig in previous:
                signal.signal(sig, signal.SIG_IGN)
        fleet.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
