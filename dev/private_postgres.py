"""A private, throwaway PostgreSQL 16 from the pgserver wheel, on a free loopback port.

For machines without a PostgreSQL server: the test session starts one, so that the
whole suite runs instead of skipping every database test. PostgreSQL refuses to run as
root, so as root the server runs as the unprivileged user `nobody`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .process_group import free_port


def _binaries() -> Path:
    import pgserver  # a dev dependency; imported only when a private server is needed

    return Path(pgserver.__file__).parent / "pginstall" / "bin"


@contextlib.contextmanager
def private_postgres() -> Iterator[str]:
    """Start a server with trust auth; yield its URL (postgresql://postgres@127.0.0.1:PORT)."""
    binaries = _binaries()
    # Not under pytest's tmp_path: that is private to root, and `nobody` must enter it.
    folder = Path(tempfile.mkdtemp(prefix="vse-postgres-"))
    data, port = folder / "data", free_port()
    user = "nobody" if os.geteuid() == 0 else None
    if user:
        entry = pwd.getpwnam(user)
        os.chown(folder, entry.pw_uid, entry.pw_gid)

    def run(*command: str) -> None:
        subprocess.run(command, user=user, check=True, capture_output=True, cwd=folder)

    try:
        run(
            str(binaries / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        )
        run(
            str(binaries / "pg_ctl"),
            "start",
            "--wait",
            "-D",
            str(data),
            "-l",
            str(folder / "postgres.log"),
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
        )
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        with contextlib.suppress(subprocess.CalledProcessError, FileNotFoundError):
            run(str(binaries / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate", "--wait")
        shutil.rmtree(folder, ignore_errors=True)
