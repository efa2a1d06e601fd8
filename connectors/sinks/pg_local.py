"""A throw-away PostgreSQL server started from local binaries (demo, benchmarks, tests).

``initdb`` into a temp dir (trust auth, ``-U postgres``, ``--no-sync``), started on a
free 127.0.0.1 port with ``fsync=off``: for demos, benchmarks and tests only, never for
data you want to keep. PostgreSQL refuses to run as root, so as root the server runs as
the unprivileged system user ``clinstream-pg`` (created with ``useradd`` on first use) in
a directory that user owns. Missing binaries raise :class:`PostgresUnavailable` saying
exactly what to install.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PG_USER = "clinstream-pg"
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found. Install them, e.g. "
    "`apt-get install -y postgresql` (Debian/Ubuntu), `dnf install -y postgresql-server` (Fedora/RHEL), "
    "`brew install postgresql@15` (macOS); or run ./tests/support/ensure_postgres.sh as root; "
    "or point CLINSTREAM_PG_DSN / CLINSTREAM_TEST_PG_DSN at a server you manage."
)


class PostgresUnavailable(RuntimeError):
    """No way to get a PostgreSQL server for the tests."""


@dataclass
class PgServer:
    dsn: str
    backend: str  # "external" | "testcontainers" | "local"
    _stop: Callable[[], None] = field(default=lambda: None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path)) or (0,)


def find_pg_bindir() -> Path | None:
    """Directory holding initdb + pg_ctl + postgres, newest version first."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False)
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(out.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin",
                    "/usr/local/opt/postgresql@*/bin"):
        candidates.extend(sorted(glob.glob(pattern), key=_version_key, reverse=True))
    candidates.extend(["/usr/local/pgsql/bin", "/usr/bin", "/usr/local/bin"])
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for cand in candidates:
        d = Path(cand)
        if all((d / exe).is_file() and os.access(d / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    res = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
         PG_USER],
        capture_output=True, text=True, check=False,
    )
    try:  # another test process may have created it concurrently (exit 9): fine either way
        return pwd.getpwnam(PG_USER)
    except KeyError as exc:
        raise PostgresUnavailable(
            f"running as root and could not create the unprivileged user {PG_USER!r} for PostgreSQL "
            f"(useradd said: {res.stderr.strip()}); create it or set CLINSTREAM_TEST_PG_DSN"
        ) from exc


def start_local_postgres(tmpdir: Path, timeout_s: float = 30.0) -> PgServer:
    bindir = find_pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(INSTALL_HINT)
    as_root = os.geteuid() == 0
    # Our own short dir under the system temp: unix socket paths are limited to ~107 bytes,
    # and pytest's tmp dirs are mode 0700 under root, which the postgres user cannot traverse.
    # mkdtemp makes it 0700 and unpredictable, so the fixed parent is not a symlink/race risk.
    short_tmp = "/tmp" if Path("/tmp").is_dir() else None  # noqa: S108
    workdir = Path(tempfile.mkdtemp(prefix="clinstream-pg-", dir=short_tmp))
    data, sock, log = workdir / "data", workdir / "sock", Path(tmpdir) / "postgres.log"
    sock.mkdir()
    run_kw: dict[str, object] = {}
    if as_root:
        user = _ensure_pg_user()
        for p in (workdir, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
        log = workdir / "postgres.log"  # the server writes it, so it must live where that user can write
        run_kw = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
    if as_root:
        env["HOME"] = str(workdir)

    def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir, check=False,
            **run_kw,  # type: ignore[arg-type]
        )

    res = run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
               "-E", "UTF8", "--locale=C", "--no-instructions"], timeout=120)
    if res.returncode != 0:
        shutil.rmtree(workdir, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}")

    last_err = ""
    for _attempt in range(3):  # the free port can be taken between choosing and binding it
        port = _free_port()
        opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
                f"-c full_page_writes=off -c max_connections=200")
        res = run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", str(int(timeout_s)),
                   "-o", opts, "start"], timeout=timeout_s + 10)
        if res.returncode == 0:
            break
        last_err = res.stderr.strip() or res.stdout.strip()
        if log.exists():
            last_err += "\n" + log.read_text(errors="replace")[-2000:]
    else:
        shutil.rmtree(workdir, ignore_errors=True)
        raise PostgresUnavailable(f"pg_ctl start failed: {last_err}")

    def stop() -> None:
        run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    server = PgServer(dsn=f"postgresql://postgres@127.0.0.1:{port}/postgres", backend="local", _stop=stop)
    atexit.register(server.stop)  # a crashed test run must not leave a server behind
    _wait_ready(server.dsn, timeout_s)
    return server


def _wait_ready(dsn: str, timeout_s: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(dsn, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
                return
        except psycopg.OperationalError as exc:
            last = exc
            time.sleep(0.1)
    raise PostgresUnavailable(f"PostgreSQL at {dsn} not ready within {timeout_s}s: {last}")
