"""The embedded server's guards that need no running vLLM: one starter per port."""

from __future__ import annotations

import time

import pytest

from dynasor_graph.local import LocalServerError
from dynasor_graph.local._server import LocalServer, _take_port_lock, free_port, wait_if_starting


def test_a_second_starter_on_a_port_is_refused_and_waits_instead() -> None:
    port = free_port()
    lock = _take_port_lock(port)  # as held by a process that is starting the server
    assert lock is not None
    try:
        with pytest.raises(LocalServerError, match="another process is starting"):
            LocalServer(port).start()
        begin = time.monotonic()
        assert wait_if_starting(port, timeout_s=2) is False  # held, but nothing ever answers
        assert time.monotonic() - begin >= 2
    finally:
        lock.close()
    begin = time.monotonic()
    assert wait_if_starting(port) is False  # nobody holds it: no waiting at all
    assert time.monotonic() - begin < 1.5


def test_servers_made_at_once_never_share_a_port() -> None:
    # Two threads making servers at the same moment (ServersAhead, replicas): the kernel may
    # hand both the same free port, and the second start would find it taken seconds later.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        ports = list(pool.map(lambda _: free_port(), range(400)))
    assert len(set(ports)) == len(ports)


def test_a_port_another_process_is_starting_a_server_on_is_never_handed_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Two test workers (processes): one's server took a port's lock and binds it only when
    # vLLM is up; meanwhile the kernel may offer that port to the other's free_port().
    import socket

    from dynasor_graph.local import _server

    def unused_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    starting, spare = unused_port(), unused_port()
    lock = _take_port_lock(starting)  # as held by the other process's starting server
    assert lock is not None
    offers = iter([starting, spare])

    class Kernel:  # bind to port 0 is offered the starting server's port first
        def __init__(self, *args: object) -> None: ...
        def __enter__(self) -> Kernel: return self
        def __exit__(self, *args: object) -> None: ...
        def bind(self, address: object) -> None: ...
        def getsockname(self) -> tuple[str, int]: return ("127.0.0.1", next(offers))

    monkeypatch.setattr(_server.socket, "socket", Kernel)
    try:
        assert free_port() == spare
    finally:
        lock.close()
