"""The package's wings stay apart: the app-facing service loads no pipeline machinery."""

from __future__ import annotations

import ast
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


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere: at the top, inside functions,
    under TYPE_CHECKING (a cycle there is still two modules that need each other)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from package import module` imports the module; else the names are in `base`.
            found.update(
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            )
    return found & modules - {name}


def test_no_module_of_the_package_takes_part_in_an_import_cycle():
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {name: imported_modules(path, set(paths)) for name, path in paths.items()}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo.extend(graph[module])
        return seen

    in_cycles = sorted(name for name in graph if name in reaches(name))
    assert in_cycles == []
