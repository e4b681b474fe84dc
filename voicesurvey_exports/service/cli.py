"""The ``voicesurvey-exports`` command: schema upgrades and the request API from a shell.

Success exits 0 and prints on stdout: one line of text for the ``db`` commands, JSON
for the others. Any error prints one ``error:`` line on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from ..app_db.engine import DatabaseUrlError, get_engine
from ..app_db.errors import AppDatabaseError, describe_database_error
from ..settings import Settings, SettingsError
from .requests import ExportRequestError, ExportRequests

if TYPE_CHECKING:
    from ..app_db.migrations import UpgradeReport


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voicesurvey-exports",
        description="Campaign CSV exports: request, inspect and refresh export jobs.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="manage the app database schema")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="create or upgrade the schema in DATABASE_URL")
    db_commands.add_parser("status", help="show the schema revision of DATABASE_URL")

    # The request API's operations: each acts as the user given by --user-id.
    for name, help_text, subject in (
        ("request", "request an export of a campaign", "--campaign-id"),
        ("status", "show one export job", "job_id"),
        ("list", "list a campaign's export jobs, newest first", "--campaign-id"),
        ("refresh-url", "re-sign a completed export's download URL", "job_id"),
        ("cancel", "cancel a pending or running export", "job_id"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(subject, **({"required": True} if subject.startswith("-") else {}))
        command.add_argument("--user-id", required=True)
        if name == "request":
            command.add_argument(
                "--bom",
                action="store_true",
                help="start the file with the UTF-8 byte-order mark (for Excel)",
            )
            command.add_argument(
                "--gzip", action="store_true", help="store the file gzipped (.csv.gz, .jsonl.gz)"
            )
            command.add_argument(
                "--format", help="csv (the default), jsonl, parquet or xlsx", default=None
            )
            command.add_argument(
                "--outcome",
                action="append",
                dest="outcomes",
                help="keep only contacts in this terminal state (repeatable; default: all)",
            )
            command.add_argument(
                "--attempted-from",
                help="keep contacts last attempted at or after this ISO 8601 instant, "
                "with its offset (e.g. 2026-11-16T00:00:00+01:00)",
            )
            command.add_argument(
                "--attempted-to", help="... and before this one (the window is [from, to))"
            )
            command.add_argument(
                "--time-zone",
                help="IANA zone the file's timestamps are written in (default UTC)",
            )

    serve = commands.add_parser("serve", help="serve the export HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    commands.add_parser("openapi", help="print the HTTP API's OpenAPI document")
    return parser


def _run(args: argparse.Namespace) -> object:
    if args.command == "db":
        database_url = Settings.from_env().database_url
        # Alembic is imported only by the commands that need it.
        from ..app_db.migrations import current_version, upgrade_with_report

        engine = get_engine(database_url)
        if args.db_command == "upgrade":
            return _describe_upgrade(upgrade_with_report(engine))
        return _describe_status(current_version(engine))
    if args.command == "openapi":
        from .http.app import openapi_document

        return openapi_document()
    if args.command == "serve":
        return _serve(args.host, args.port)
    api = ExportRequests.from_settings(Settings.from_env())
    if args.command == "request":
        given = {
            "format": args.format,
            "outcomes": args.outcomes,
            "attempted_from": args.attempted_from,
            "attempted_to": args.attempted_to,
            "time_zone": args.time_zone,
        }
        return api.request_export(
            args.campaign_id,
            args.user_id,
            bom=args.bom,
            compression="gzip" if args.gzip else "none",
            # Options not given take the service's defaults.
            **{name: value for name, value in given.items() if value is not None},
        ).to_json()
    if args.command == "status":
        return api.get_export(args.job_id, args.user_id).to_json()
    if args.command == "list":
        return [job.to_json() for job in api.list_exports(args.campaign_id, args.user_id)]
    if args.command == "cancel":
        return api.cancel_export(args.job_id, args.user_id).to_json()
    return api.refresh_download_url(args.job_id, args.user_id).to_json()


def _describe_upgrade(report: UpgradeReport) -> str:
    adopted = (
        f"adopted at {report.adopted_at} from {report.adopted_from}; " if report.adopted_at else ""
    )
    if not report.applied:
        return f"app schema at {report.version}: {adopted}nothing to apply"
    return f"app schema at {report.version}: {adopted}applied {', '.join(report.applied)}"


def _describe_status(version: str | None) -> str:
    from ..app_db.migrations import KNOWN_VERSIONS, LATEST_VERSION

    if version is not None and version not in KNOWN_VERSIONS:
        return f"app schema at {version}: newer than this release (its latest is {LATEST_VERSION})"
    pending = KNOWN_VERSIONS[KNOWN_VERSIONS.index(version) + 1 :] if version else KNOWN_VERSIONS
    where = f"app schema at {version}" if version else "no app schema"
    if not pending:
        return f"{where}: up to date"
    return f"{where}: {', '.join(pending)} to apply (run: voicesurvey-exports db upgrade)"


def _serve(host: str, port: int) -> None:
    import uvicorn

    from .http.app import create_app

    app = create_app()  # validates every setting, token keys included, before listening
    uvicorn.run(app, host=host, port=port, log_level="info")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = _run(args)
    except (ExportRequestError, SettingsError, DatabaseUrlError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except AppDatabaseError as error:
        print(f"error: database: {error}", file=sys.stderr)
        return 1
    except SQLAlchemyError as error:
        # The server's primary message only: DETAIL lines and parameters may hold row values.
        print(f"error: database: {describe_database_error(error)}", file=sys.stderr)
        return 1
    if isinstance(result, str):
        print(result)
    elif result is not None:
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
