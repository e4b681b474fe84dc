"""The fast path (voicesurvey_exports/single_node) runs only on the Dagster versions it
was verified with: on any other, its daemon command and its launcher refuse to start in
one line that names the fallback (Dagster's own launcher, deploy/dagster.yaml)."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest

from voicesurvey_exports import single_node

PATCH_VERSION = "import dagster; dagster.__version__ = '1.14.0'\n"


def refused(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PATCH_VERSION + code], capture_output=True, text=True, timeout=120
    )


def test_the_verified_version_is_the_one_installed():
    assert dg.__version__ in single_node.VERIFIED_DAGSTER_VERSIONS
    assert single_node.refusal(dg.__version__) is None


def test_another_version_is_refused_in_one_line_naming_the_fallback():
    message = single_node.refusal("1.14.0")
    assert "\n" not in message
    assert "1.13.27" in message and "1.14.0" in message
    assert "deploy/dagster.yaml" in message and "dagster-daemon run" in message
    with pytest.raises(SystemExit, match="not 1.14.0"):
        single_node.require_verified_dagster("1.14.0")


@pytest.mark.parametrize(
    "code",
    [
        # voicesurvey-exports-daemon run
        "import sys; sys.argv = ['voicesurvey-exports-daemon', 'run']\n"
        "from voicesurvey_exports.single_node.daemon import main; main()",
        # an instance that configures the fast path's launcher, as Dagster loads it
        "import importlib; importlib.import_module('voicesurvey_exports.single_node.run_launcher')",
    ],
    ids=["daemon-command", "instance-launcher"],
)
def test_on_another_dagster_version_the_fast_path_refuses_to_start(code):
    result = refused(code)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("voicesurvey_exports.single_node was verified with Dagster 1.13.27")
    assert "deploy/dagster.yaml" in line
