"""One-line failure reasons a person can act on, from Dagster's failure events."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg


def one_line(text: str, limit: int = 300) -> str:
    """Collapse a message to one short line (job rows and CLI output show one line)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def permanent_failure(description: str) -> dg.Failure:
    """A failure that retrying cannot fix (bad request data): fail the run at once."""
    return dg.Failure(description=one_line(description), allow_retries=False)


def reason_from_step_failures(step_failures: Sequence[dg.DagsterEvent]) -> str | None:
    """The first failed step's reason: a dg.Failure's description, else the root exception."""
    for event in step_failures:
        data = event.step_failure_data
        if data.user_failure_data and data.user_failure_data.description:
            return one_line(data.user_failure_data.description)
        error = data.error
        # Dagster wraps the op's exception; the root cause is what a person can act on.
        while error is not None and (error.cause or error.context) is not None:
            error = error.cause or error.context
        if error is not None:
            # The message starts with the exception's module path; keep class and text.
            message = error.message.split(": ", 1)[-1] if ": " in error.message else error.message
            op_name = event.step_key.rsplit(".", 1)[-1]  # graph asset steps are asset.op
            return one_line(f"{op_name} failed: {error.cls_name}: {message}")
    return None
