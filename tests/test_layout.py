"""The package's wings stay apart: the app-facing service loads no pipeline machinery."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "voicesurvey_exports"
HEAVY = ("dagster", "dagster_aws", "pandas", "pyarrow")


def modules_loaded_by(*modules: str) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_the_service_wing_loads_neither_dagster_nor_pandas_nor_pyarrow():
    loaded = modules_loaded_by(
        "voicesurvey_exports.service.cli",
        "voicesurvey_exports.service.requests",
        "voicesurvey_exports.service.http.app",
        "voicesurvey_exports.export_file.s3_object",
    )
    assert not loaded & set(HEAVY)


def test_no_shipped_module_imports_the_development_tooling():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(
            line.startswith(("from dev", "import dev")) for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []


def test_each_wing_is_a_folder_named_for_what_it_holds():
    wings = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").exists()}
    assert wings == {"app_db", "export_file", "pipeline", "service"}
