"""The ``voicesurvey-exports`` command: schema upgrades and the request API from a shell.

Success exits 0 and prints on stdout: one line of text for the ``db`` commands, JSON
for the others. Any error prints one ``error:`` line on stderr and exits with the code
of its kind (EXIT_CODES; docs/cli.md), so that a script can tell "retry later" from
"will never work".
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from importlib import metadata
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from ..app_db.engine import DatabaseUrlError, get_engine
from ..app_db.errors import AppDatabaseError, describe_database_error, is_unavailable
from ..settings import Settings, SettingsError
from .requests import (
    ExportRequestError,
    ExportRequests,
    FileGone,
    IdempotencyKeyReused,
    InvalidRequest,
    NotCancellable,
    NotCompleted,
    NotFound,
    PermissionDenied,
    RateLimited,
    StorageUnavailable,
)

if TYPE_CHECKING:
    from ..app_db.migrations import UpgradeReport

# The exit codes, one per kind of outcome (docs/cli.md has the same table). 2 is
# argparse's; 75 and 78 are sysexits.h's EX_TEMPFAIL and EX_CONFIG, which supervisors
# and shell scripts already read as "try again later" and "fix the configuration".
EXIT_OK = 0
EXIT_FAILED = 1  # the database refused the operation (e.g. a schema from a newer release)
EXIT_USAGE = 2  # bad arguments: argparse's own exit code
EXIT_NOT_PERMITTED = 3  # the user may not use exports (viewer, unknown user)
EXIT_NOT_FOUND = 4  # no such campaign or job (or, under the owner policy, not theirs)
EXIT_WRONG_STATE = 5  # the HTTP API's 409s: not completed, file gone, already ended, key reused
EXIT_RATE_LIMITED = 6  # EXPORT_REQUESTS_PER_MINUTE reached: retry after the time said
EXIT_UNAVAILABLE = 75  # the database or S3 could not be reached: retry later
EXIT_CONFIG = 78  # a setting breaks its rule: nothing was done
# The HTTP API's 409s: what the job's state (or an earlier request) does not allow.
WRONG_STATE_ERRORS = (NotCompleted, FileGone, NotCancellable, IdempotencyKeyReused)
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "the database refused the operation",
    EXIT_USAGE: "usage error (bad or missing arguments)",
    EXIT_NOT_PERMITTED: "not permitted (the user may not use exports)",
    EXIT_NOT_FOUND: "not found (campaign or export job)",
    EXIT_WRONG_STATE: "wrong state (not completed, file gone, already ended, key reused)",
    EXIT_RATE_LIMITED: "rate limited (EXPORT_REQUESTS_PER_MINUTE): retry after the time said",
    EXIT_UNAVAILABLE: "unavailable (database or S3 down): retry later",
    EXIT_CONFIG: "configuration error (a setting breaks its rule)",
}

# What each command reads from the environment (its --help lists them). Every command
# but openapi validates all settings first, so any bad variable stops it (exit 78).
_DATABASE = ("DATABASE_URL",)
_REQUESTS = (*_DATABASE, "EXPORT_ACCESS_POLICY")
_S3 = (
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or AWS_PROFILE",
    "EXPORT_URL_EXPIRATION_SECONDS",
)
_AUTH = ("AUTH_ISSUER", "AUTH_AUDIENCE", "AUTH_JWKS_URL, AUTH_JWKS_FILE or AUTH_JWT_SECRET")
ENVIRONMENT = {
    "db upgrade": _DATABASE,
    "db status": _DATABASE,
    "request": (*_REQUESTS, "EXPORT_REQUESTS_PER_MINUTE"),
    "status": _REQUESTS,
    "list": _REQUESTS,
    "refresh-url": (*_REQUESTS, *_S3),
    "cancel": _REQUESTS,
    "serve": (
        *_REQUESTS,
        "EXPORT_REQUESTS_PER_MINUTE",
        *_S3,
        *_AUTH,
        "EXPORT_HTTP_MAX_BODY_BYTES",
        "LOG_FORMAT",
    ),
    "schedule": _REQUESTS,
    "openapi": (),
}


def version() -> str:
    try:
        return metadata.version("voicesurvey-exports")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


def _uuid(what: str):
    def parse(value: str) -> str:
        try:
            uuid.UUID(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} {value!r} is not a valid UUID") from None
        return value

    parse.__name__ = what  # argparse names the argument's type in its errors
    return parse


def _epilog(command: str) -> str:
    names = ENVIRONMENT[command]
    if not names:
        read = "environment: none (needs no configuration)"
    else:
        read = "environment (every setting is validated first; docs/cli.md):\n" + "\n".join(
            f"  {name}" for name in names
        )
    return read + "\n\nexit codes: see voicesurvey-exports --help, or docs/cli.md"


def _exit_codes_epilog() -> str:
    return "exit codes:\n" + "\n".join(
        f"  {code:>2}  {meaning}" for code, meaning in EXIT_CODES.items()
    )


def _parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="voicesurvey-exports",
        description="Campaign CSV exports: request, inspect and refresh export jobs.",
        epilog=_exit_codes_epilog(),
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, *, epilog_of: str | None = None, **options):
        return commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_epilog(epilog_of or name),
            formatter_class=formatter,
            **options,
        )

    db = add("db", "manage the app database schema", epilog_of="db upgrade")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    for name, help_text in (
        ("upgrade", "create or upgrade the schema in DATABASE_URL"),
        ("status", "show the schema revision of DATABASE_URL"),
    ):
        db_commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_epilog(f"db {name}"),
            formatter_class=formatter,
        )

    user_help = "the acting user's id (a UUID); their role is read from the database"
    campaign_help = "the campaign's id (a UUID)"
    job_help = "the export job's id (a UUID)"
    # The request API's operations: each acts as the user given by --user-id.
    for name, help_text, subject in (
        ("request", "request an export of a campaign", "--campaign-id"),
        ("status", "show one export job", "job_id"),
        ("list", "list a campaign's export jobs, newest first", "--campaign-id"),
        ("refresh-url", "re-sign a completed export's download URL", "job_id"),
        ("cancel", "cancel a pending or running export", "job_id"),
    ):
        command = add(name, help_text)
        if subject.startswith("-"):
            command.add_argument(
                subject, required=True, type=_uuid("campaign id"), help=campaign_help
            )
        else:
            command.add_argument(
                subject, metavar="JOB_ID", type=_uuid("export job id"), help=job_help
            )
        command.add_argument("--user-id", required=True, type=_uuid("user id"), help=user_help)
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
            command.add_argument(
                "--idempotency-key",
                help="the same key from the same user within 24 h prints the first "
                "request's job instead of recording another (as the HTTP API's header)",
            )

    _add_schedule_commands(add)

    serve = add("serve", "serve the export HTTP API (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")

    add("openapi", "print the HTTP API's OpenAPI document")
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


def _add_schedule_commands(add) -> None:
    from .schedules import check_cron, check_time_zone

    schedule = add("schedule", "manage a campaign's recurring exports (docs/recurring-exports.md)")
    actions = schedule.add_subparsers(dest="schedule_command", required=True)

    def action(name: str, help_text: str):
        return actions.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_epilog("schedule"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    campaign = {"required": True, "type": _uuid("campaign id"), "help": "the campaign's id"}
    user = {"required": True, "type": _uuid("user id"), "help": "the acting user's id"}
    create = action("create", "export a campaign on a cron schedule")
    create.add_argument("--campaign-id", **campaign)
    create.add_argument("--user-id", **user)
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
    create.add_argument("--format", help="csv (the default), jsonl, parquet or xlsx")
    create.add_argument(
        "--outcome",
        action="append",
        dest="outcomes",
        help="keep only contacts in this terminal state (repeatable; default: all)",
    )
    create.add_argument(
        "--file-time-zone",
        help="IANA zone the files' timestamps are written in (default: --time-zone)",
    )
    listing = action("list", "list a campaign's export schedules")
    listing.add_argument("--campaign-id", **campaign)
    listing.add_argument("--user-id", **user)
    delete = action("delete", "delete an export schedule")
    delete.add_argument(
        "schedule_id", metavar="SCHEDULE_ID", type=_uuid("schedule id"), help="the schedule's id"
    )
    delete.add_argument("--user-id", **user)


def _run_schedule(args: argparse.Namespace, api: ExportRequests) -> object:
    from .schedules import ExportSchedules

    schedules = ExportSchedules(api)
    if args.schedule_command == "create":
        given = {"format": args.format, "outcomes": args.outcomes}
        return schedules.create_schedule(
            args.campaign_id,
            args.user_id,
            cron=args.cron,
            time_zone=args.time_zone,
            incremental=args.incremental,
            bom=args.bom,
            compression=args.compression,
            file_time_zone=args.file_time_zone,
            # Options not given take the service's defaults.
            **{name: value for name, value in given.items() if value is not None},
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
            idempotency_key=args.idempotency_key,
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
    from .http.observability import log_config

    app = create_app()  # validates every setting, token keys included, before listening
    log_format = Settings.from_env().log_format
    uvicorn.run(app, host=host, port=port, log_level="info", log_config=log_config(log_format))


def exit_code(error: Exception) -> int:
    """The exit code of an error main() reports (EXIT_CODES)."""
    if isinstance(error, (SettingsError, DatabaseUrlError)):
        return EXIT_CONFIG
    if isinstance(error, PermissionDenied):
        return EXIT_NOT_PERMITTED
    if isinstance(error, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, RateLimited):
        return EXIT_RATE_LIMITED
    if isinstance(error, WRONG_STATE_ERRORS):
        return EXIT_WRONG_STATE
    if isinstance(error, InvalidRequest):
        # A value the service refuses (an option, a cron): a usage error, as argparse's.
        return EXIT_USAGE
    if isinstance(error, StorageUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, (AppDatabaseError, SQLAlchemyError)):
        return EXIT_UNAVAILABLE if is_unavailable(error) else EXIT_FAILED
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = _run(args)
    except (ExportRequestError, SettingsError, DatabaseUrlError) as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_code(error)
    except AppDatabaseError as error:
        print(f"error: database: {error}", file=sys.stderr)
        return exit_code(error)
    except SQLAlchemyError as error:
        # The server's primary message only: DETAIL lines and parameters may hold row values.
        print(f"error: database: {describe_database_error(error)}", file=sys.stderr)
        return exit_code(error)
    if isinstance(result, str):
        print(result)
    elif result is not None:
        json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
