"""`make demo`: the whole export flow on this machine, with nothing but Python.

Starts, each in its own process group: a moto S3 server on loopback and `dg dev`
(Dagster UI + daemon, SQLite instance storage). The app database is SQLite under
.local/ unless $DATABASE_URL says otherwise. Seeds demo data once, submits one export
as a campaign manager, prints how to fetch it, and stops everything on Ctrl-C.

Environment: DEMO_HOME (default .local), DEMO_UI_PORT (3000), DEMO_S3_PORT (5001),
DEMO_API_PORT (8000, the HTTP API).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jwt
import psycopg2
from sqlalchemy.engine import make_url

# The development tooling (dev/) sits beside the package, not in it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dev import local_services, process_group
from dev.demo_data import LARGE_CAMPAIGN_ID, MANAGER_ID, seed_demo_data
from voicesurvey_exports.app_db.engine import get_engine
from voicesurvey_exports.app_db.job_status import TERMINAL_JOB_STATUSES
from voicesurvey_exports.app_db.migrations import upgrade
from voicesurvey_exports.service.requests import ExportRequests
from voicesurvey_exports.settings import Settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class Stopping:
    """SIGINT (Ctrl-C), SIGTERM and SIGHUP stop the demo: the first raises
    KeyboardInterrupt; once the demo is stopping, later ones are only noted, so that
    they cannot cut its clean-up short. A process manager stopping the demo signals its
    whole process group, and `make` passes SIGTERM on: two signals come at once.
    """

    def __init__(self) -> None:
        self.begun = False
        # Set even where inherited as ignored (a background job ignores SIGINT): the
        # demo must stop, and its children then start with the default handling.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._on_signal)

    def begin(self) -> None:
        self.begun = True

    def _on_signal(self, _signum, _frame) -> None:
        if self.begun:
            # os.write, not print: a handler must not re-enter a buffered stream.
            with contextlib.suppress(OSError):
                os.write(sys.stdout.fileno(), b"still stopping...\n")
            return
        self.begun = True
        raise KeyboardInterrupt


def stop_stale_processes(pid_file: Path) -> None:
    """A demo killed uncleanly leaves its process groups running: end them first."""
    if not pid_file.exists():
        return
    for pgid in json.loads(pid_file.read_text() or "[]"):
        # Only a group still running this checkout's programs: ids are reused after a reboot.
        if any(str(BIN) in cmdline for _, cmdline in process_group.group_members(pgid)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                print(f"stopped process group {pgid} left by an earlier demo", flush=True)
    pid_file.unlink()


def require_free_port(port: int, variable: str) -> None:
    try:
        process_group.wait_for(lambda: not process_group.port_open(port), 10, f"port {port}")
    except TimeoutError:
        raise SystemExit(
            f"error: port {port} is in use by another program; choose another with {variable}=PORT"
        ) from None


def ensure_postgres_database(database_url: str) -> None:
    url = make_url(database_url)
    if not url.drivername.startswith("postgres"):
        return
    admin = psycopg2.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        dbname="postgres",
    )
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{url.database}"')
    admin.close()


def main() -> int:
    stopping = Stopping()
    env = os.environ  # the child processes and this process's clients share it
    home = Path(env.get("DEMO_HOME", REPO / ".local")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    ui_port = int(env.get("DEMO_UI_PORT", "3000"))
    s3_port = int(env.get("DEMO_S3_PORT", "5001"))
    api_port = int(env.get("DEMO_API_PORT", "8000"))
    pid_file = home / "demo.pids"
    env.setdefault("DATABASE_URL", f"sqlite:///{home / 'app.db'}")
    env["DAGSTER_HOME"] = str(home / "dagster_home")
    env.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}",
        **local_services.LOCAL_CREDENTIALS,
    )
    Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
    shutil.copy(REPO / "scripts" / "demo.dagster.yaml", Path(env["DAGSTER_HOME"]) / "dagster.yaml")
    settings = Settings.from_env(env)

    stop_stale_processes(pid_file)
    require_free_port(s3_port, "DEMO_S3_PORT")
    require_free_port(ui_port, "DEMO_UI_PORT")
    require_free_port(api_port, "DEMO_API_PORT")
    # The HTTP API checks bearer tokens; the demo signs its own with a fresh secret.
    env.setdefault("AUTH_ISSUER", "voicesurvey-demo")
    env.setdefault("AUTH_AUDIENCE", "voicesurvey-exports")
    env.setdefault("AUTH_JWT_SECRET", secrets.token_urlsafe(32))
    started: list[subprocess.Popen] = []

    def launch(command: list[str], log_name: str) -> None:
        started.append(process_group.start(command, home / log_name, env, cwd=REPO))
        pid_file.write_text(json.dumps([process.pid for process in started]))

    try:
        started.append(local_services.start_s3_server(s3_port, home / "moto.log", env))
        pid_file.write_text(json.dumps([process.pid for process in started]))
        local_services.create_bucket(
            settings.aws_endpoint_url, settings.s3_bucket_name, settings.aws_region
        )

        ensure_postgres_database(settings.database_url)
        engine = get_engine(settings.database_url)
        upgrade(engine)
        seeded = seed_demo_data(engine)
        (home / "demo.env").write_text(
            "export "
            + " ".join(
                f"{name}={shlex.quote(env[name])}"
                for name in (
                    "DATABASE_URL",
                    "AWS_ENDPOINT_URL",
                    "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY",
                )
            )
            + "\n"
        )

        launch([str(BIN / "dg"), "dev", "-h", "127.0.0.1", "-p", str(ui_port)], "dagster.log")
        ui = f"http://127.0.0.1:{ui_port}"
        process_group.wait_for(lambda: _responds(f"{ui}/server_info"), 180, "the Dagster UI", 1)
        print(
            f"Dagster UI is up at {ui} ({'demo data added' if seeded else 'demo data reused'})",
            flush=True,
        )

        started.append(local_services.start_http_api(api_port, home / "api.log", env, REPO))
        pid_file.write_text(json.dumps([process.pid for process in started]))
        bearer = demo_token(env, "demo-manager")

        api = ExportRequests.from_settings(settings)
        job = api.request_export(LARGE_CAMPAIGN_ID, MANAGER_ID)
        print(
            f"requested export {job.id} of campaign {LARGE_CAMPAIGN_ID} as a campaign manager;"
            " waiting for the sensor and the run...",
            flush=True,
        )
        job = process_group.wait_for(
            _finished_showing_progress(api, job.id), 300, "the first export", interval=0.5
        )
        env_file = shlex.quote(os.path.relpath(home / "demo.env"))
        cli = os.path.relpath(BIN / "voicesurvey-exports")
        print(
            f"""
Export {job.id}: {job.status}, {job.total_records} rows{
                "" if job.status == "completed" else ": " + str(job.error_message)
            }
  UI:        {ui}/assets/campaign_export   (runs, metadata, backfills)
  download:  curl -o export.csv "{job.download_url}"
  sha256:    {job.sha256} ({job.size_bytes} bytes; sha256sum export.csv to check)
  another:   source {env_file}
             {cli} request --campaign-id {LARGE_CAMPAIGN_ID} --user-id {MANAGER_ID}
             {cli} status JOB_ID --user-id {MANAGER_ID}
  http:      curl -X POST -H "Authorization: Bearer {bearer}" \\
               http://127.0.0.1:{api_port}/api/campaigns/{LARGE_CAMPAIGN_ID}/export
Ctrl-C stops the demo.""",
            flush=True,
        )
        while all(process.poll() is None for process in started):
            time.sleep(1)
        print(
            f"error: a demo process stopped unexpectedly; see the logs in {home}", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        with contextlib.suppress(OSError):  # a closed terminal or pipe must not stop clean-up
            print("stopping the demo...", flush=True)
        return 0
    finally:
        # From begin() on a signal is only noted. The first signal may come just before,
        # as the demo stops for another reason. (Not contextlib.suppress: creating it
        # is a call, where a signal could still slip in unguarded.)
        try:  # noqa: SIM105
            stopping.begin()
        except KeyboardInterrupt:
            pass
        process_group.stop_all(started)
        pid_file.unlink(missing_ok=True)


def demo_token(env, subject: str) -> str:
    """A day-long token for a demo user, signed with the demo's secret."""
    now = int(time.time())
    claims = {
        "sub": subject,
        "iss": env["AUTH_ISSUER"],
        "aud": env["AUTH_AUDIENCE"],
        "iat": now,
        "exp": now + 24 * 3600,
    }
    return jwt.encode(claims, env["AUTH_JWT_SECRET"], algorithm="HS256")


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _finished_showing_progress(api: ExportRequests, job_id):
    """A condition for wait_for: the job once it has ended; until then it prints the job's
    status and progress ("running 42%") whenever they change."""
    shown = None

    def finished():
        nonlocal shown
        job = api.get_export(job_id, MANAGER_ID)
        if job.status in TERMINAL_JOB_STATUSES:
            return job
        state = job.status
        if job.progress_percent is not None:
            state += f" {job.progress_percent}%"
        if state != shown:
            print(f"  {state}", flush=True)
            shown = state
        return None

    return finished


if __name__ == "__main__":
    sys.exit(main())
