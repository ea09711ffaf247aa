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
