"""Database errors that are safe to show: one line, no bound parameters, no row values.

SQLAlchemy puts bound parameters into its error text and PostgreSQL's DETAIL repeats
the failing row; a write that carries a signed download link would leak the link into
Dagster's event log, the CLI's output or the HTTP service's log. Writes go through
``safe_database_errors``, which re-raises such errors as ``AppDatabaseError`` carrying
only the server's primary message and its SQLSTATE.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy.exc import (
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# Errors that say "could not talk to the database now" (refused, lost, timed out, locked)
# rather than "the database refused this": worth retrying later.
_UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError)


def is_unavailable(error: BaseException) -> bool:
    """Whether the database error is the database being out of reach (retry later)."""
    if isinstance(error, AppDatabaseError):
        return error.unavailable
    return isinstance(error, _UNAVAILABLE)


class AppDatabaseError(Exception):
    """The app database refused or failed an operation; the message holds no values.
    ``unavailable``: it could not be reached or answered in time (retry later)."""

    def __init__(self, message: str, *, unavailable: bool = False):
        super().__init__(message)
        self.unavailable = unavailable


def describe_database_error(error: BaseException) -> str:
    """The server's primary message and SQLSTATE, never parameters or DETAIL lines."""
    orig = getattr(error, "orig", None)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    code = getattr(orig, "pgcode", None)
    if primary:
        return f"{type(orig).__name__}: {primary}" + (f" (SQLSTATE {code})" if code else "")
    if isinstance(error, DBAPIError) and orig is not None:
        # SQLite and others: the driver's message is one line without the parameters.
        return f"{type(orig).__name__}: {str(orig).splitlines()[0] if str(orig) else ''}"
    return type(error).__name__


@contextlib.contextmanager
def safe_database_errors(action: str) -> Iterator[None]:
    """Re-raise database errors from the block as a one-line AppDatabaseError.

    The original is suppressed (``from None``): Python's tracebacks, logging and
    Dagster's serialized errors all skip a suppressed context, so none of them can print
    its parameters.
    """
    try:
        yield
    except SQLAlchemyError as error:
        raise AppDatabaseError(
            f"{action} failed: {describe_database_error(error)}",
            unavailable=is_unavailable(error),
        ) from None


class MigrationRefused(AppDatabaseError):
    """A revision refuses to run: it would lose or misread rows (the message says which)."""
