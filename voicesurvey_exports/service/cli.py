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
                "--gzip", action="store_true", help="store the file gzipped (.csv.gz)"
            )

    _add_schedule_commands(commands)

    serve = commands.add_parser("serve", help="serve the export HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    commands.add_parser("openapi", help="print the HTTP API's OpenAPI document")
    return parser


def _argument_check(check):
    """An argparse type from a service check: a bad value is a usage error naming it."""

    def checked(value: str) -> str:
        try:
            return check(value)
        except ExportRequestError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    checked.__name__ = check.__name__.removeprefix("check_")
    return checked


def _add_schedule_commands(commands) -> None:
    from .schedules import check_cron, check_time_zone

    schedule = commands.add_parser("schedule", help="manage a campaign's recurring exports")
    actions = schedule.add_subparsers(dest="schedule_command", required=True)
    create = actions.add_parser("create", help="export a campaign on a cron schedule")
    create.add_argument("--campaign-id", required=True)
    create.add_argument("--user-id", required=True)
    create.add_argument(
        "--cron", required=True, type=_argument_check(check_cron), help='e.g. "0 6 * * *"'
    )
    create.add_argument(
        "--time-zone",
        default="UTC",
        type=_argument_check(check_time_zone),
        help="IANA zone the cron is read in (default UTC)",
    )
    create.add_argument(
        "--incremental",
        action="store_true",
        help="after the first delivery, only contacts changed since the last completed one",
    )
    create.add_argument("--bom", action="store_true", help="start each file with a UTF-8 BOM")
    create.add_argument(
        "--compression", choices=("none", "gzip"), default="none", help="store files gzipped"
    )
    listing = actions.add_parser("list", help="list a campaign's export schedules")
    listing.add_argument("--campaign-id", required=True)
    listing.add_argument("--user-id", required=True)
    delete = actions.add_parser("delete", help="delete an export schedule")
    delete.add_argument("schedule_id")
    delete.add_argument("--user-id", required=True)


def _run_schedule(args: argparse.Namespace, api: ExportRequests) -> object:
    from .schedules import ExportSchedules

    schedules = ExportSchedules(api)
    if args.schedule_command == "create":
        return schedules.create_schedule(
            args.campaign_id,
            args.user_id,
            cron=args.cron,
            time_zone=args.time_zone,
            incremental=args.incremental,
            bom=args.bom,
            compression=args.compression,
        ).to_json()
    if args.schedule_command == "list":
        return [s.to_json() for s in schedules.list_schedules(args.campaign_id, args.user_id)]
    schedules.delete_schedule(args.schedule_id, args.user_id)
    return {"schedule_id": args.schedule_id, "deleted": True}


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
    if args.command == "schedule":
        return _run_schedule(args, api)
    if args.command == "request":
        return api.request_export(
            args.campaign_id,
            args.user_id,
            bom=args.bom,
            compression="gzip" if args.gzip else "none",
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
