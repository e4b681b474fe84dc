"""The export's one query: a campaign's contacts in a terminal state, with their answers,
narrowed by a request's filters (ContactFilter: outcomes, a last_attempt_at window).

Its rows go to a raw CSV spool: the CSV columns in CSV order, no header, NULL as an
unquoted empty field and the empty string as a quoted one (``""``), timestamps in UTC as
PostgreSQL's ISO output writes them ("2026-11-16 09:49:55+00", "...:55.12+00",
"0044-03-15 12:00:00+00 BC", "12026-01-01 00:00:00+00", "infinity"), or, for a request's
time zone, in that zone with its offset ("2026-11-16 04:49:55-05", "...+05:30"): text,
since Python's datetime holds none but years 1-9999. exports.csv_format turns the spool into
the export file; it reads nothing but an unquoted empty field as NULL, so text like
"N/A" or "NULL" stays text.
"""

from __future__ import annotations

import io
import uuid
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

import pandas as pd
import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from sqlalchemy import ColumnElement, Connection, Engine, Select, func, or_, select, text
from sqlalchemy.dialects.postgresql import psycopg2 as psycopg2_dialect

from .engine import is_postgres
from .schema import TERMINAL_CONTACT_STATES, contacts, survey_responses
from .times import as_utc, is_known_time_zone, utcnow

# Every spool timestamp is in UTC.
SPOOL_UTC_SUFFIX = "+00"
# Rows per pandas chunk on the SQLite path.
SQLITE_CHUNK_ROWS = 50_000
# COPY writes one row per call: a C-level buffer of this size gathers them, so that
# progress is counted per chunk, never per row.
COPY_CHUNK_BYTES = 1024 * 1024


def _changed_since(changed_since: datetime) -> ColumnElement:
    """An incremental delivery's rows: the contact row or its survey response changed at
    or after the time (survey_responses has no updated_at: its completed_at)."""
    return or_(
        contacts.c.updated_at >= changed_since, survey_responses.c.completed_at >= changed_since
    )


@dataclass(frozen=True)
class ContactFilter:
    """Which terminal contacts an export keeps: those in `outcomes` (a subset of the
    terminal states) last attempted in [attempted_from, attempted_to), and, for an
    incremental delivery, changed since `changed_since`. Either attempt bound leaves out
    contacts never attempted (NULL last_attempt_at)."""

    outcomes: tuple[str, ...] = TERMINAL_CONTACT_STATES
    attempted_from: datetime | None = None
    attempted_to: datetime | None = None
    changed_since: datetime | None = None

    def conditions(self, campaign_id: uuid.UUID) -> list:
        # Never a state outside the terminal ones, whatever the caller passes.
        states = [state for state in TERMINAL_CONTACT_STATES if state in self.outcomes]
        where = [contacts.c.campaign_id == campaign_id, contacts.c.state.in_(states)]
        if self.attempted_from is not None:
            where.append(contacts.c.last_attempt_at >= self.attempted_from)
        if self.attempted_to is not None:
            where.append(contacts.c.last_attempt_at < self.attempted_to)
        if self.changed_since is not None:  # reads survey_responses: the query joins it
            where.append(_changed_since(self.changed_since))
        return where


EVERY_TERMINAL_CONTACT = ContactFilter()


def terminal_contacts_query(
    campaign_id: uuid.UUID, contact_filter: ContactFilter = EVERY_TERMINAL_CONTACT
) -> Select:
    """Rows in CSV column order, ordered by contact id (no phone numbers or emails)."""
    return (
        select(
            contacts.c.campaign_id,
            contacts.c.id.label("contact_id"),
            contacts.c.external_contact_id,
            contacts.c.state.label("outcome"),
            contacts.c.attempts_count,
            contacts.c.last_attempt_at,
            survey_responses.c.completed_at,
            survey_responses.c.q1_answer,
            survey_responses.c.q2_answer,
            survey_responses.c.q3_answer,
        )
        .select_from(
            contacts.outerjoin(survey_responses, survey_responses.c.contact_id == contacts.c.id)
        )
        .where(*contact_filter.conditions(campaign_id))
        .order_by(contacts.c.id)
    )


def count_terminal_contacts(
    conn: Connection,
    campaign_id: uuid.UUID,
    contact_filter: ContactFilter = EVERY_TERMINAL_CONTACT,
) -> int:
    """How many rows the export of the campaign will have (ix_contacts_campaign_id_state)."""
    query = select(func.count()).where(*contact_filter.conditions(campaign_id))
    if contact_filter.changed_since is not None:
        query = query.select_from(
            contacts.outerjoin(survey_responses, survey_responses.c.contact_id == contacts.c.id)
        )
    return conn.execute(query).scalar_one()


# Where an incremental delivery's rows end, read just before the COPY takes its snapshot
# (READ COMMITTED: each statement has its own): the start of the oldest transaction open
# in this database, ours included. A row that the COPY does not see was written by a
# transaction still open then, or begun later, and its updated_at (its writer's now(), or
# any later clock) is not before that start: the next delivery, which takes rows changed
# at or after this time, has it. See docs/recurring-exports.md.
# (Client sessions only: autovacuum and other background workers change no updated_at.)
WINDOW_END_SQL = text(
    "SELECT min(xact_start) FROM pg_stat_activity "
    "WHERE datname = current_database() AND backend_type = 'client backend'"
)


def copy_terminal_contacts(
    engine: Engine,
    campaign_id: uuid.UUID,
    spool: BinaryIO,
    on_progress: Callable[[int], None] | None = None,
    contact_filter: ContactFilter = EVERY_TERMINAL_CONTACT,
    time_zone: str = "UTC",
    *,
    on_window_end: Callable[[datetime], None] | None = None,
) -> int:
    """Write the query's rows to a raw CSV spool (see csv_format.SPOOL_COLUMN_TYPES);
    return how many rows the database sent (the export's row-count check compares them).

    PostgreSQL streams them with COPY, the fastest way out of the server; memory
    stays flat. SQLite (the demo) goes through pandas in chunks.

    ``on_progress(rows_so_far)`` is called per chunk. On PostgreSQL the count is of line
    ends, so answers with newlines make it run ahead of the rows; the return value is
    exact. Whatever it raises stops the export.

    ``contact_filter`` says which terminal contacts (outcomes, attempt window, changed
    since); timestamps are written in ``time_zone``. ``on_window_end(time)`` is told,
    before any row, the time from which the rows this call cannot see are changed (the
    next incremental delivery's ``changed_since``).
    """
    if not is_known_time_zone(time_zone):
        raise ValueError(f"time zone {time_zone!r} is not an IANA time zone name")
    query = terminal_contacts_query(campaign_id, contact_filter)
    if is_postgres(engine):
        compiled = query.compile(
            dialect=psycopg2_dialect.dialect(), compile_kwargs={"render_postcompile": True}
        )
        counter = None
        if on_progress is not None:
            counter = _ChunkCounter(spool, on_progress)
            spool = io.BufferedWriter(counter, COPY_CHUNK_BYTES)
        with engine.begin() as conn:
            if on_window_end is not None:  # first: before the COPY's snapshot
                on_window_end(as_utc(conn.execute(WINDOW_END_SQL).scalar_one()))
            # ISO timestamps in the request's zone (UTC by default): the spool's
            # documented format. set_config takes the zone as a bound parameter.
            conn.execute(text("SELECT set_config('TimeZone', :zone, true)"), {"zone": time_zone})
            conn.execute(text("SET LOCAL DateStyle = 'ISO, YMD'"))
            cursor = conn.connection.dbapi_connection.cursor()
            # COPY takes no parameters: psycopg2 binds them into the statement, quoted
            # and escaped as for any query (never formatted in by hand).
            params = {
                name: str(value) if isinstance(value, uuid.UUID) else value
                for name, value in compiled.params.items()
            }
            sql = cursor.mogrify(str(compiled), params).decode()
            try:
                cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", spool)
                spool.flush()
            except psycopg2.OperationalError:
                # The server dropped the connection: discard it rather than roll it back,
                # so that the caller sees this error, not "connection already closed".
                conn.invalidate()
                raise
            except BaseException:
                if counter is not None and counter.stopped:
                    # on_progress stopped it mid-stream: a rollback would first read the
                    # rest of the COPY; closing the connection ends it at once.
                    conn.invalidate()
                raise
            finally:
                if counter is not None:  # the buffer's close writes and reports no more
                    counter.stopped = True
            return cursor.rowcount  # the server's own count of the rows COPY sent
    rows = 0
    if on_window_end is not None:
        # SQLite (the demo) has one writer at a time; its rows carry the app's clock.
        on_window_end(utcnow())
    with engine.connect() as conn:
        for chunk in pd.read_sql(query, conn, chunksize=SQLITE_CHUNK_ROWS):
            write_spool_rows(chunk, spool, time_zone)
            rows += len(chunk)
            if on_progress is not None:
                on_progress(rows)
    return rows


class _ChunkCounter(io.RawIOBase):
    """The spool behind COPY's buffer: writes each chunk through, counts its line ends
    (bytes.count, C speed) and tells on_progress."""

    def __init__(self, spool: BinaryIO, on_progress: Callable[[int], None]):
        self.spool, self.on_progress = spool, on_progress
        self.rows, self.stopped = 0, False

    def writable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        if self.stopped:  # the buffer's flush at close, after the COPY ended: drop it
            return len(chunk)
        data = bytes(chunk)
        self.spool.write(data)
        self.rows += data.count(b"\n")
        try:
            self.on_progress(self.rows)
        except BaseException:
            self.stopped = True
            raise
        return len(data)


def write_spool_rows(rows: pd.DataFrame, spool: BinaryIO, time_zone: str = "UTC") -> None:
    """Append rows (the query's columns, in order) to the spool in COPY's CSV dialect."""
    columns = {}
    for column in rows.columns:
        if column == "attempts_count":
            columns[column] = pa.array(rows[column], type=pa.int64(), from_pandas=True)
            continue
        values = rows[column]
        if column in ("campaign_id", "contact_id"):
            values = values.map(str)
        elif column in ("last_attempt_at", "completed_at"):
            columns[column] = (
                postgres_timestamp_text(values)
                if time_zone == "UTC"
                else postgres_zoned_text(values, zoneinfo.ZoneInfo(time_zone))
            )
            continue
        columns[column] = pa.array(values, type=pa.string(), from_pandas=True)
    # Arrow's writer quotes every text cell and leaves NULL an unquoted empty field, so ''
    # stays apart from NULL. (pandas' to_csv writes both as an empty field, and Python 3.11's
    # csv module cannot quote all but NULL.)
    pa_csv.write_csv(
        pa.table(columns),
        spool,
        write_options=pa_csv.WriteOptions(include_header=False, eol="\r\n"),
    )


def postgres_timestamp_text(values: pd.Series) -> pa.Array:
    """Datetimes as PostgreSQL's ISO text in UTC ("2026-11-16 09:49:55.12+00"; SQLite's
    naive ones are UTC), formatted by Arrow: pd.to_datetime would refuse years outside
    1677-2262, and strftime("%S") would drop the fractional seconds."""
    stamps = pa.array(values, from_pandas=True)
    # To naive UTC (a cast keeps the instant), in microseconds, which SQLite stores.
    stamps = pc.cast(stamps, pa.timestamp("us"))
    text = pc.strftime(stamps, "%Y-%m-%d %H:%M:%S")  # seconds with six decimals
    # As PostgreSQL writes them: no trailing zeros, no "." for whole seconds.
    text = pc.replace_substring_regex(text, r"\.?0+$", "")
    return pc.binary_join_element_wise(text, pa.scalar(SPOOL_UTC_SUFFIX), "")


def postgres_zoned_text(values: pd.Series, zone: zoneinfo.ZoneInfo) -> pa.Array:
    """Datetimes (SQLite's: naive UTC, years 1-9999) as PostgreSQL's ISO text in a zone:
    "2026-11-16 04:49:55.12-05", "...+05:30", "...+00:09:21"."""
    from .times import as_utc

    texts = []
    for value in values:
        if value is None or pd.isna(value):
            texts.append(None)
            continue
        if isinstance(value, pd.Timestamp):
            value = value.to_pydatetime()
        local = as_utc(value).astimezone(zone)
        text_value = local.replace(tzinfo=None).isoformat(sep=" ")
        if local.microsecond:
            text_value = text_value.rstrip("0")
        seconds = int(local.utcoffset().total_seconds())
        sign, seconds = ("-" if seconds < 0 else "+"), abs(seconds)
        hours, rest = divmod(seconds, 3600)
        minutes, secs = divmod(rest, 60)
        offset = f"{sign}{hours:02d}"
        if minutes or secs:
            offset += f":{minutes:02d}" + (f":{secs:02d}" if secs else "")
        texts.append(text_value + offset)
    return pa.array(texts, pa.string())
