"""The single-machine fast path: opt-in, fenced, tied to the Dagster versions it was
verified with.

Every module here reaches into Dagster's private modules (`dagster._*`) or another
library's private names; nothing outside this folder does, and nothing outside it
imports it (tests/test_layout.py). It is switched on by the instance file
deploy/dagster-single-node.yaml (ForkingRunLauncher, FileComputeLogManager) and the
daemon command `voicesurvey-exports-daemon run` (daemon.py); without both, Dagster's own
launcher, compute-log manager and `dagster-daemon run` do the same work, more slowly
(docs/operations.md, "Instance files").

Private modules change in Dagster's minor releases, so importing this package on any
Dagster version but those listed refuses to start, in one line naming the fallback.
"""

from __future__ import annotations

import dagster

# Dagster versions this folder was verified with (its tests, the benchmark, the soak).
VERIFIED_DAGSTER_VERSIONS = ("1.13.27",)
FALLBACK = (
    "use Dagster's own launcher instead: the instance file deploy/dagster.yaml "
    "and `dagster-daemon run`"
)


def refusal(version: str) -> str | None:
    """The one-line refusal for this Dagster version, or None if it was verified."""
    if version in VERIFIED_DAGSTER_VERSIONS:
        return None
    verified = ", ".join(VERIFIED_DAGSTER_VERSIONS)
    return (
        f"voicesurvey_exports.single_node was verified with Dagster {verified}, "
        f"not {version}: {FALLBACK}"
    )


def require_verified_dagster(version: str = dagster.__version__) -> None:
    # SystemExit: the one line is all that is printed, no traceback, whether the daemon
    # command or an instance loading the launcher imports this package.
    message = refusal(version)
    if message is not None:
        raise SystemExit(message)


require_verified_dagster()
