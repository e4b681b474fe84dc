"""The package's wings stay apart: the app-facing service loads no pipeline machinery, and
only the opt-in fast path (voicesurvey_exports/single_node) touches private names of
Dagster or any other library, and nothing else imports it."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "voicesurvey_exports"
FENCED = PACKAGE / "single_node"
HEAVY = ("dagster", "dagster_aws", "pandas", "pyarrow")
# Underscored names that their libraries document as public: SQLAlchemy's Row._mapping
# (underscored so as not to clash with column names) and namedtuple's methods.
PUBLIC_UNDERSCORED = {"_mapping", "_asdict", "_fields", "_replace", "_make"}


def modules_loaded_by(*modules: str, full: bool = False) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(' '.join(sorted({{m if {full} else m.split('.')[0] for m in sys.modules}})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"DATABASE_URL": "sqlite:///unused.db", "PATH": ""},
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
    assert wings == {"app_db", "export_file", "pipeline", "service", "single_node"}


def unfenced_modules() -> Iterator[Path]:
    """Every Python module of the repository outside the fenced folder and the tests
    (tests of the fast path reach into Dagster to check it)."""
    for folder in (PACKAGE, REPO / "dev", REPO / "scripts", REPO / "benchmarks"):
        for path in sorted(folder.rglob("*.py")):
            if FENCED not in path.parents:
                yield path


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_used(source: str) -> list[str]:
    """Private names of other libraries a module imports or reaches for: `dagster._core`,
    `from botocore import _x`, `multiprocessing.process._children`, `client._signer`,
    `getattr(client, "_signer")`. Its own (`self._x`, `cls._x`, relative imports) are not."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if any(map(_private, a.name.split(".")))]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if any(map(_private, module.split("."))):
                found.append(module)
            found += [f"{module}.{a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            own = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not own and node.attr not in PUBLIC_UNDERSCORED:
                found.append(ast.unparse(node))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr", "delattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        ):
            found.append(ast.unparse(node))
    return found


def test_the_private_name_scan_finds_each_kind_of_reach():
    source = (
        "import dagster._core.launcher\n"
        "from dagster._cli.api import _execute_run_command_body\n"
        "from multiprocessing import process\n"
        "process._children.discard(None)\n"
        "getattr(client, '_request_signer')\n"
        "self._own = row._mapping\n"
        "from .sibling import _helper\n"
    )
    assert sorted(private_names_used(source)) == [
        "dagster._cli.api",
        "dagster._cli.api._execute_run_command_body",
        "dagster._core.launcher",
        "getattr(client, '_request_signer')",
        "process._children",
    ]


def test_only_the_fenced_folder_uses_private_names_of_dagster_or_other_libraries():
    offenders = {
        str(path.relative_to(REPO)): names
        for path in unfenced_modules()
        if (names := private_names_used(path.read_text()))
    }
    assert offenders == {}


def test_nothing_outside_the_fenced_folder_imports_it():
    def imports_fenced(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [alias.name for alias in node.names]
            else:
                continue
            if any("single_node" in name.split(".") for name in names):
                return True
        return False

    assert [str(p.relative_to(REPO)) for p in unfenced_modules() if imports_fenced(p)] == []
    # The definitions, as a code server loads them, bring in none of it.
    loaded = modules_loaded_by("voicesurvey_exports.pipeline.definitions", full=True)
    assert "voicesurvey_exports.pipeline.definitions" in loaded
    assert not {m for m in loaded if m.startswith("voicesurvey_exports.single_node")}


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
