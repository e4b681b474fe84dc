"""The app's tables as SQLAlchemy Core metadata.

One definition serves PostgreSQL (production: native enums, uuid, timestamptz)
and SQLite (the local demo), so every query in this package runs on both.

The database gets these tables from the Alembic revisions in ``app_db/alembic/versions``:
a change here needs a new revision there (tests/test_migrations.py checks that a fresh
upgrade builds exactly what ``metadata.create_all`` would).
"""

from __future__ import annotations

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    event,
    false,
    func,
    text,
    true,
)

from .job_status import JobStatus

USER_ROLES = ("admin", "campaign_manager", "viewer")
CAMPAIGN_STATUSES = ("draft", "scheduled", "running", "paused", "completed", "cancelled")
CONTACT_STATES = ("pending", "in_progress", "completed", "refused", "not_reached", "excluded")
# Plain strings, in JobStatus's order: the names the database's enum type and rules hold.
EXPORT_JOB_STATUSES = tuple(status.value for status in JobStatus)
# File options a request may ask for (revision V0005).
COMPRESSIONS = ("none", "gzip")
# File formats (revision V0008); parquet and xlsx are compressed inside and have no BOM.
FORMATS = ("csv", "jsonl", "parquet", "xlsx")
FORMATS_WITH_ENVELOPE = ("csv", "jsonl")
# An IANA time zone name ("America/Argentina/ComodRivadavia" is 32 characters).
TIME_ZONE_LENGTH = 64
# S3 bucket names are 3 to 63 characters.
BUCKET_NAME_LENGTH = 63
# An Idempotency-Key: 1-255 printable ASCII characters (as Stripe takes them).
IDEMPOTENCY_KEY_LENGTH = 255

# The contacts an export contains: those whose calling is over, one way or another.
TERMINAL_CONTACT_STATES = ("completed", "refused", "not_reached", "excluded")
# Roles allowed to request, list, read and refresh exports (the CSV holds survey answers).
EXPORT_ROLES = ("campaign_manager", "admin")

metadata = MetaData()


def _timestamptz(**kwargs) -> Column:
    return Column(DateTime(timezone=True), **kwargs)


def _id() -> Column:
    return Column("id", Uuid, primary_key=True)


def _campaign_id() -> Column:
    return Column("campaign_id", Uuid, ForeignKey("campaigns.id"), nullable=False)


def _enum(name: str, values: tuple[str, ...], type_name: str, default: str) -> Column:
    return Column(name, Enum(*values, name=type_name), nullable=False, server_default=default)


def _created_at() -> Column:
    return _timestamptz(name="created_at", nullable=False, server_default=func.now())


def _in(column: str, values: tuple) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


# What export_jobs' columns may hold (revision V0006): the app writes these rows by SQL,
# and a value the pipeline and the service do not know is refused at the INSERT, not
# found later by a failing export or a failing API call. Name -> SQL condition.
EXPORT_JOB_RULES = {
    "ck_export_jobs_compression": _in("compression", COMPRESSIONS),
    "ck_export_jobs_progress_percent": "progress_percent BETWEEN 0 AND 100",
    "ck_export_jobs_total_records": "total_records >= 0",
    "ck_export_jobs_size_bytes": "size_bytes >= 0",
    "ck_export_jobs_s3_bucket": "s3_bucket <> ''",
    # Revision V0008: the format and the filters.
    "ck_export_jobs_format": _in("format", FORMATS),
    "ck_export_jobs_format_envelope": f"{_in('format', FORMATS_WITH_ENVELOPE)} "
    "OR (compression = 'none' AND NOT bom)",
    "ck_export_jobs_outcomes": "outcomes <> ''",
    "ck_export_jobs_attempted_window": "attempted_from < attempted_to",
    "ck_export_jobs_time_zone": "time_zone <> ''",
}
# SQLite only: PostgreSQL's native enum and boolean types refuse anything else already.
EXPORT_JOB_SQLITE_RULES = {
    "ck_export_jobs_status": _in("status", EXPORT_JOB_STATUSES),
    "ck_export_jobs_bom": "bom IN (0, 1)",
}


def _export_job_rules() -> list[CheckConstraint]:
    return [CheckConstraint(sql, name=name) for name, sql in EXPORT_JOB_RULES.items()] + [
        CheckConstraint(sql, name=name).ddl_if(dialect="sqlite")
        for name, sql in EXPORT_JOB_SQLITE_RULES.items()
    ]


users = Table(
    "users",
    metadata,
    _id(),
    Column("oidc_subject", Text, unique=True, nullable=False),
    Column("email", Text, unique=True, nullable=False),
    Column("name", Text),
    Column("role", Enum(*USER_ROLES, name="user_role"), nullable=False),
    _created_at(),
)

campaigns = Table(
    "campaigns",
    metadata,
    _id(),
    Column("name", Text, nullable=False),
    Column("description", Text),
    _enum("status", CAMPAIGN_STATUSES, "campaign_status", default="draft"),
    Column("language", Text, nullable=False, server_default="en"),
    Column("created_by_user_id", Uuid, ForeignKey("users.id")),
    _created_at(),
    _timestamptz(name="updated_at", nullable=False, server_default=func.now()),
)

contacts = Table(
    "contacts",
    metadata,
    _id(),
    _campaign_id(),
    Column("external_contact_id", Text),
    Column("phone_number", Text, nullable=False),
    Column("email", Text),
    Column("preferred_language", Text),
    Column("has_prior_consent", Boolean, nullable=False, server_default=false()),
    Column("do_not_call", Boolean, nullable=False, server_default=false()),
    _enum("state", CONTACT_STATES, "contact_state", default="pending"),
    Column("attempts_count", Integer, nullable=False, server_default="0"),
    _timestamptz(name="last_attempt_at"),
    Column("last_outcome", Text),
    _created_at(),
    _timestamptz(name="updated_at", nullable=False, server_default=func.now()),
    Index("ix_contacts_campaign_id_state", "campaign_id", "state"),
)

survey_responses = Table(
    "survey_responses",
    metadata,
    _id(),
    Column("contact_id", Uuid, ForeignKey("contacts.id"), nullable=False, unique=True),
    _campaign_id(),
    Column("q1_answer", Text),
    Column("q2_answer", Text),
    Column("q3_answer", Text),
    _timestamptz(name="completed_at", nullable=False, server_default=func.now()),
)

# Recurring exports (revision V0009): each due time of an enabled schedule becomes one
# export_jobs row, requested by created_by_user_id; deleted ones are kept (deleted_at) for
# the jobs that name them.
export_schedules = Table(
    "export_schedules",
    metadata,
    _id(),
    _campaign_id(),
    Column("created_by_user_id", Uuid, ForeignKey("users.id"), nullable=False),
    Column("cron", Text, nullable=False),  # five fields, minute resolution
    Column("time_zone", Text, nullable=False, server_default="UTC"),  # IANA name
    Column("options", JSON, nullable=False),  # the export options, as a request takes them
    Column("incremental", Boolean, nullable=False, server_default=false()),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("disabled_reason", Text),
    # The latest due time that made its job: the sensor makes one for a later one only.
    _timestamptz(name="last_due_at"),
    _created_at(),
    _timestamptz(name="deleted_at"),
)

export_jobs = Table(
    "export_jobs",
    metadata,
    _id(),
    _campaign_id(),
    Column("requested_by_user_id", Uuid, ForeignKey("users.id")),
    _enum("status", EXPORT_JOB_STATUSES, "export_job_status", default=JobStatus.PENDING.value),
    Column("s3_key", String(500)),
    Column("download_url", Text),
    _timestamptz(name="url_expires_at"),
    Column("error_message", Text),
    Column("total_records", Integer),
    _created_at(),
    _timestamptz(name="completed_at"),
    # The Dagster run that owns the job now (revision V0003): only that run may complete or fail
    # it, so a stale run or one launched with another job's tag cannot touch it.
    Column("dagster_run_id", String(64)),
    # The stored object's size and SHA-256 (hex), exactly as downloaded (revision V0004).
    Column("size_bytes", BigInteger),
    Column("sha256", String(64)),
    # The request's file options (revision V0005): a UTF-8 byte-order mark, gzip.
    Column("bom", Boolean, nullable=False, server_default=false()),
    Column("compression", String(16), nullable=False, server_default="none"),
    # 0-100 while running, never decreasing; NULL while pending (revision V0005).
    Column("progress_percent", SmallInteger),
    # A user asked to cancel the running export; the pipeline ends it `cancelled`.
    _timestamptz(name="cancel_requested_at"),
    # The bucket of s3_key, recorded with it (revision V0006), so that a change of
    # S3_BUCKET_NAME never loses a file. NULL on rows recorded before V0006: the
    # configured bucket.
    Column("s3_bucket", String(BUCKET_NAME_LENGTH)),
    # The request's Idempotency-Key (revision V0007): one job per user and key.
    Column("idempotency_key", String(IDEMPOTENCY_KEY_LENGTH)),
    # What the request asked the file to be and hold (revision V0008): its format; the
    # outcomes it keeps (comma-separated terminal states; NULL: all of them); the window
    # [attempted_from, attempted_to) on contacts.last_attempt_at (NULL: unbounded); the
    # IANA time zone its text timestamps are written in.
    Column("format", String(16), nullable=False, server_default="csv"),
    Column("outcomes", Text),
    _timestamptz(name="attempted_from"),
    _timestamptz(name="attempted_to"),
    Column("time_zone", String(TIME_ZONE_LENGTH), nullable=False, server_default="UTC"),
    # A recurring export's delivery (revision V0009): its schedule and due time, one job
    # per due time (the unique constraint); `changed_since` the window's start of an
    # incremental delivery (NULL: every terminal contact), `snapshot_at` where the rows
    # it extracted end, the next incremental delivery's `changed_since` once completed.
    Column(
        "schedule_id",
        Uuid,
        ForeignKey("export_schedules.id", name="fk_export_jobs_schedule_id"),
    ),
    _timestamptz(name="due_at"),
    _timestamptz(name="changed_since"),
    _timestamptz(name="snapshot_at"),
    UniqueConstraint("schedule_id", "due_at", name="uq_export_jobs_schedule_due_at"),
    *_export_job_rules(),
    # The sensor asks for "pending jobs, oldest first" every few seconds.
    Index("ix_export_jobs_status_created_at", "status", "created_at", "id"),
    Index(
        "ux_export_jobs_idempotency",
        "requested_by_user_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
        sqlite_where=text("idempotency_key IS NOT NULL"),
    ),
    # The rate limit counts a user's requests of the last minute (request_rate.py).
    Index("ix_export_jobs_requester_created_at", "requested_by_user_id", "created_at"),
)

# The outbox of completion webhooks (revision V0005): one row per job and terminal state,
# written in the transaction that ends the job, so no end goes unannounced, and delivered
# from here with retries, so a restart loses none.
export_notifications = Table(
    "export_notifications",
    metadata,
    _id(),
    Column("export_job_id", Uuid, ForeignKey("export_jobs.id"), nullable=False),
    Column("event", String(32), nullable=False),  # export.completed | failed | cancelled
    Column("body", Text, nullable=False),  # the exact JSON that is signed and sent
    _created_at(),
    _timestamptz(name="next_attempt_at", nullable=False, server_default=func.now()),
    Column("attempts", Integer, nullable=False, server_default="0"),
    _timestamptz(name="delivered_at"),
    _timestamptz(name="abandoned_at"),  # gave up: the receiver refused it, or too late
    Column("last_error", Text),
    UniqueConstraint("export_job_id", "event", name="uq_export_notifications_job_event"),
    # The sender asks for open rows, oldest first, every 2 s: delivered ones (nearly all,
    # in time) stay out of the index.
    Index(
        "ix_export_notifications_open",
        "created_at",
        "id",
        postgresql_where=text("delivered_at IS NULL AND abandoned_at IS NULL"),
        sqlite_where=text("delivered_at IS NULL AND abandoned_at IS NULL"),
    ),
)

# Rows inserted by hand or by other tools get an id on PostgreSQL (the app sets its own).
for _table in (
    users,
    campaigns,
    contacts,
    survey_responses,
    export_schedules,
    export_jobs,
    export_notifications,
):
    event.listen(
        _table,
        "after_create",
        DDL(f"ALTER TABLE {_table.name} ALTER COLUMN id SET DEFAULT gen_random_uuid()").execute_if(
            dialect="postgresql"
        ),
    )
