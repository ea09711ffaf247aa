"""A throwaway PostgreSQL server for tests: ``with temp_postgres() as uri: ...``.

Runs Debian's ``postgresql`` binaries (``/usr/lib/postgresql/<version>/bin``, or ``$PG_BINDIR``,
or ``initdb`` on PATH): ``initdb`` into a temp folder, ``pg_ctl start`` on 127.0.0.1 at a free
port (its unix socket inside the temp folder), ``createdb``; yields a libpq URI; then
``pg_ctl stop -m fast`` and the folder is removed. PostgreSQL refuses to run as root, so as root
every server command runs as the ``postgres`` user (``runuser -u postgres --``) and the folder
is handed to it. Starting and stopping take about a second.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")
"""Durability against power loss off: the database dies with the test anyway."""


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries, or no user to run them as."""


def find_bindir() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: ``$PG_BINDIR``, the newest Debian
    ``/usr/lib/postgresql/<version>/bin``, or the folder of ``initdb`` on PATH."""

    def version(path: str) -> int:
        name = Path(path).parent.name
        return int(name) if name.isdigit() else 0

    candidates = [os.environ.get("PG_BINDIR", "")]
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for candidate in filter(None, candidates):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    raise PostgresUnavailable("no PostgreSQL server binaries: `apt-get install -y postgresql` "
                              "(make install does it when run as root)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _as_user(user: str) -> tuple[list[str], int | None, int | None]:
    """Command prefix and uid/gid: ``runuser -u postgres --`` when we are root."""
    if os.geteuid() != 0:
        return [], None, None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root without `runuser` to drop to postgres")
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        raise PostgresUnavailable(f"running as root and there is no {user!r} user") from exc
    return [runuser, "-u", user, "--"], entry.pw_uid, entry.pw_gid


@contextlib.contextmanager
def temp_postgres(dbname: str = "test", *, user: str = "postgres",
                  startup_timeout_s: int = 60) -> Iterator[str]:
    """Yield ``postgresql://postgres@127.0.0.1:PORT/<dbname>`` of a fresh private server."""
    bindir = find_bindir()
    prefix, uid, gid = _as_user(user)
    root = Path(tempfile.mkdtemp(prefix="dynasor-pg-"))
    data, log = root / "data", root / "postgres.log"
    if uid is not None and gid is not None:
        os.chown(root, uid, gid)

    def run(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        # cwd=root: the postgres user may not be allowed into our working directory
        return subprocess.run([*prefix, *map(str, args)], cwd=root, capture_output=True,
                              text=True, check=check, stdin=subprocess.DEVNULL)

    started = False
    try:
        try:
            run(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                "--locale=C", "--no-sync")
        except subprocess.CalledProcessError as exc:
            raise PostgresUnavailable(f"initdb failed: {exc.stderr.strip()}") from exc
        port = 0
        for _attempt in range(3):  # another process may take the free port before we bind it
            port = _free_port()
            options = " ".join([f"-c listen_addresses=127.0.0.1 -p {port}",
                                f"-c unix_socket_directories='{root}'",
                                *(f"-c {setting}" for setting in FAST_SETTINGS)])
            done = run(bindir / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w",
                       "-t", str(startup_timeout_s), "start", check=False)
            if done.returncode == 0:
                started = True
                break
        if not started:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"postgres did not start: {done.stderr}{tail}")
        run(bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", dbname)
        yield f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
    finally:
        if started:
            run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "stop", check=False)
        shutil.rmtree(root, ignore_errors=True)
