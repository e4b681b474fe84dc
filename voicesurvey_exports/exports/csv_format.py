"""The export CSV: columns, cell formatting and the formula-injection guard.

UTF-8, a header row, RFC 4180 quoting with CRLF row ends; timestamps as ISO 8601
UTC with a ``Z``; NULL as an empty field.
"""

from __future__ import annotations

import csv
import io

import pandas as pd

CSV_COLUMNS = (
    "campaign_id",
    "contact_id",
    "external_contact_id",
    "outcome",
    "attempts_count",
    "last_attempt_at",
    "completed_at",
    "q1_answer",
    "q2_answer",
    "q3_answer",
)
UUID_COLUMNS = ("campaign_id", "contact_id")
TIMESTAMP_COLUMNS = ("last_attempt_at", "completed_at")
# Cells that people or callers typed: the only ones that can carry a formula.
FREE_TEXT_COLUMNS = ("external_contact_id", "q1_answer", "q2_answer", "q3_answer")
# OWASP CSV injection: a spreadsheet treats a cell starting with one of these as a
# formula (LF included: some spreadsheets skip a leading newline and then see "=").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")
INJECTION_GUARD = "'"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"


def guard_formula(series: pd.Series) -> pd.Series:
    """Prefix free-text cells that a spreadsheet would run as a formula with ``'``."""
    text = series.astype("object")
    starts_formula = text.map(
        lambda cell: isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES)
    )
    return text.where(~starts_formula.astype(bool), INJECTION_GUARD + text.astype(str))


def format_timestamps(series: pd.Series) -> pd.Series:
    # utc=True reads naive values (SQLite) as UTC and converts aware ones (PostgreSQL).
    return pd.to_datetime(series, utc=True).dt.strftime(TIMESTAMP_FORMAT)


def to_csv_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Turn extracted rows into the cells the CSV holds, in column order."""
    frame = rows.loc[:, list(CSV_COLUMNS)].copy()
    for column in UUID_COLUMNS:
        frame[column] = frame[column].map(str)
    for column in TIMESTAMP_COLUMNS:
        frame[column] = format_timestamps(frame[column])
    for column in FREE_TEXT_COLUMNS:
        frame[column] = guard_formula(frame[column])
    return frame


def render_csv(rows: pd.DataFrame) -> bytes:
    """The whole CSV file for these rows (a header-only file when there are none)."""
    buffer = io.StringIO()
    to_csv_frame(rows).to_csv(
        buffer, index=False, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL, na_rep=""
    )
    return buffer.getvalue().encode("utf-8")
