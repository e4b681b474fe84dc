"""An export job's progress_percent while a run works on it.

Each phase of an export owns a range: extract 0-45, render 45-90, upload 90-99
(mark_completed sets 100). The data path calls back per chunk, batch or part, never per
row; ExportProgress turns those calls into at most one short UPDATE a second
(export_jobs.report_progress) plus one as each phase ends, and stops the export with
ExportCancelled once the job was asked to cancel or is no longer this run's.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from ..app_db import export_jobs
from ..app_db.errors import describe_database_error
from .failures import ExportCancelled


@dataclass(frozen=True)
class Phase:
    name: str
    start: int
    end: int

    def percent(self, done: int, total: int | None) -> int:
        """The job's percent with `done` of the phase's `total` done (capped at the end;
        the phase's start while the total is unknown)."""
        if total is None:
            return self.start
        if total <= 0:
            return self.end
        return self.start + (self.end - self.start) * min(max(done, 0), total) // total


EXTRACT = Phase("extract", 0, 45)
RENDER = Phase("render", 45, 90)
UPLOAD = Phase("upload", 90, 99)

# The job JSON promises a fresh value at least every 2 s while data flows; a report is a
# one-row UPDATE, so once a second costs nothing next to the export.
REPORT_INTERVAL_SECONDS = 1.0

_log = logging.getLogger(__name__)


class ExportProgress:
    """The progress of one export job in one run. The callbacks may be called from
    several threads at once (the upload's transfer threads).

    ``total_rows`` may be a function that counts them: it is called at the first report
    that needs it, so an export done within a second never counts.
    """

    def __init__(
        self,
        engine: Engine,
        export_job_id: uuid.UUID,
        run_id: str,
        total_rows: int | Callable[[], int] = 0,
        log=None,
        interval_seconds: float = REPORT_INTERVAL_SECONDS,
    ):
        self.engine, self.export_job_id, self.run_id = engine, export_job_id, run_id
        self._total_rows = total_rows
        self.log = log or _log
        self.interval_seconds = interval_seconds
        self._percent = 0  # the highest percent seen (reports never go back)
        self._reported: int | None = None
        # Not at once: the claim has just recorded 0, or an earlier phase its end.
        self._last_report = time.monotonic()
        self._lock = threading.Lock()
        self._cancelled = False

    # Callbacks of the data path.
    def extracted(self, rows: int) -> None:
        self._advance(EXTRACT, rows)

    def rendered(self, rows: int) -> None:
        self._advance(RENDER, rows)

    def uploaded(self, bytes_sent: int, total_bytes: int) -> None:
        self._advance(UPLOAD, bytes_sent, total_bytes)

    def finished(self, phase: Phase) -> None:
        """The phase is done: report its end now (also a check for a cancel)."""
        self._advance(phase, at_once=True)

    def _advance(
        self, phase: Phase, done: int = 0, total: int | None = None, at_once: bool = False
    ) -> None:
        if self._cancelled:  # every thread of the upload stops, not only the one told
            raise self._cancel_error()
        if not at_once and time.monotonic() - self._last_report < self.interval_seconds:
            return  # the usual case: a float comparison per chunk
        # A transfer thread that finds another one reporting skips its turn.
        if not self._lock.acquire(blocking=at_once):
            return
        try:
            if at_once:
                percent = phase.end
            else:
                percent = phase.percent(done, self._rows() if total is None else total)
            self._percent = max(self._percent, percent)
            if at_once and self._reported == self._percent:
                return  # said just now
            if not at_once and time.monotonic() - self._last_report < self.interval_seconds:
                return  # another thread reported while this one waited
            go_on = self._report(self._percent)
            if not go_on:
                self._cancelled = True
                raise self._cancel_error()
        finally:
            self._lock.release()

    def _rows(self) -> int | None:
        if callable(self._total_rows):
            count, self._total_rows = self._total_rows, None
            try:
                self._total_rows = count()
            except SQLAlchemyError as error:
                self._warn("its total not counted", error)
        return self._total_rows

    def _warn(self, what: str, error: SQLAlchemyError) -> None:
        # Progress is a courtesy: the export goes on without it.
        self.log.warning(
            f"progress of export job {self.export_job_id}: {what}: {describe_database_error(error)}"
        )

    def _report(self, percent: int) -> bool:
        try:
            with self.engine.begin() as conn:
                go_on = export_jobs.report_progress(conn, self.export_job_id, self.run_id, percent)
        except SQLAlchemyError as error:
            self._warn(f"{percent}% not recorded", error)  # the next report tries again
            return True
        finally:
            self._last_report = time.monotonic()
        self._reported = percent
        return go_on

    def _cancel_error(self) -> ExportCancelled:
        return ExportCancelled(f"export job {self.export_job_id} was cancelled")
