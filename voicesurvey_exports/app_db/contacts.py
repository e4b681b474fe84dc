"""The export's one query: a campaign's contacts in a terminal state, with their answers.

Its rows go to a raw CSV spool: the CSV columns in CSV order, no header, NULL as an
unquoted empty field, timestamps in UTC as PostgreSQL's ISO output writes them
("2026-11-16 09:49:55+00", possibly with fractional seconds). exports.csv_format
turns the spool into the export file.
"""

from __future__ import annotations

import io
import uuid
from typing import BinaryIO

import pandas as pd
import psycopg2
from sqlalchemy import Engine, Select, select, text
from sqlalchemy.dialects import postgresql

from .engine import is_postgres
from .schema import TERMINAL_CONTACT_STATES, contacts, survey_responses

# Rows per pandas chunk on the SQLite path.
SQLITE_CHUNK_ROWS = 50_000


def terminal_contacts_query(campaign_id: uuid.UUID) -> Select:
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
        .where(
            contacts.c.campaign_id == campaign_id,
            contacts.c.state.in_(TERMINAL_CONTACT_STATES),
        )
        .order_by(contacts.c.id)
    )


def copy_terminal_contacts(engine: Engine, campaign_id: uuid.UUID, spool: BinaryIO) -> None:
    """Write the query's rows to a raw CSV spool (see csv_format.SPOOL_COLUMN_TYPES).

    PostgreSQL streams them with COPY, the fastest way out of the server; memory
    stays flat. SQLite (the demo) goes through pandas in chunks.
    """
    query = terminal_contacts_query(campaign_id)
    if is_postgres(engine):
        # The campaign id is a uuid.UUID, so binding it literally is injection-safe.
        sql = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
        with engine.begin() as conn:
            # ISO timestamps in UTC: the spool's documented format.
            conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
            conn.execute(text("SET LOCAL DateStyle = 'ISO, YMD'"))
            cursor = conn.connection.dbapi_connection.cursor()
            try:
                cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", spool)
            except psycopg2.OperationalError:
                # The server dropped the connection: discard it rather than roll it back,
                # so that the caller sees this error, not "connection already closed".
                conn.invalidate()
                raise
        return
    text_spool = io.TextIOWrapper(spool, encoding="utf-8", newline="")
    try:
        with engine.connect() as conn:
            for chunk in pd.read_sql(query, conn, chunksize=SQLITE_CHUNK_ROWS):
                write_spool_rows(chunk, text_spool)
    finally:
        text_spool.flush()
        text_spool.detach()  # leave the caller's file open


def write_spool_rows(rows: pd.DataFrame, spool: io.TextIOBase) -> None:
    frame = rows.copy()
    for column in ("campaign_id", "contact_id"):
        frame[column] = frame[column].map(str)
    for column in ("last_attempt_at", "completed_at"):
        # SQLite hands back naive datetimes; everything stored is UTC.
        frame[column] = pd.to_datetime(frame[column], utc=True).dt.strftime("%Y-%m-%d %H:%M:%S+00")
    # CRLF as the line end makes to_csv quote any cell holding a CR or an LF.
    frame.to_csv(spool, index=False, header=False, lineterminator="\r\n", na_rep="")
