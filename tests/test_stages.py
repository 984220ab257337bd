"""Stages mirror dvc.yaml: each stage's module imports only the library and tasks/artifacts, and every file of the
project its code reaches (its imports, followed within the project, at any depth, lazy ones too) is among its
dvc.yaml deps, so DVC reruns a stage whenever code it runs changes."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sclora", "tasks", "flows")
# Commands of `python -m tasks` that are no DVC stage: the testbed check (its own make target) and the frontier's
# report (the frontier flow's last step, run only when there are points).
COMMANDS = {"testbed_check", "frontier_report"}
SHARED = {"tasks/artifacts.py", "tasks/__main__.py", "tasks/__init__.py"}


def module_file(module: str) -> Path | None:
    """The project file of a dotted module name (a package's __init__.py), or None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    path = ROOT / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every project module `path` imports, at module level or inside a function (`from x import y` counts y when
    it is a module of x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")
            }
    modules = set()
    for name in found:
        parts = name.split(".")
        modules |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # importing a.b.c runs a and a.b first
    return {name for name in modules if module_file(name)}


def reached(start: Path) -> set[str]:
    """Every project file `start` reaches through imports, relative to the root."""
    seen, stack = set(), [start]
    while stack:
        path = stack.pop()
        relative = path.relative_to(ROOT).as_posix()
        if relative in seen:
            continue
        seen.add(relative)
        stack += [module_file(name) for name in imported_modules(path)]
    return seen


def stages() -> dict[str, tuple[str, list[str]]]:
    """dvc.yaml stage -> (the tasks module its command runs, its deps)."""
    tree = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    out = {}
    for name, stage in tree["stages"].items():
        words = stage["cmd"].split()
        assert words[:3] == ["python", "-m", "tasks"], f"{name}: {stage['cmd']}"
        out[name] = (words[3], [str(dep) for dep in stage.get("deps", [])])
    return out


def covered(file: str, deps: list[str]) -> bool:
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


def test_every_stage_runs_its_own_module_and_every_module_is_a_stage_or_a_command():
    modules = {module for module, _ in stages().values()}
    files = {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__", "__main__", "artifacts"}
    assert files == modules | COMMANDS


def test_no_stage_imports_another_stage():
    offenders = []
    for path in sorted((ROOT / "tasks").glob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if relative in SHARED:
            continue
        for name in imported_modules(path):
            if name.startswith("tasks.") and module_file(name).relative_to(ROOT).as_posix() not in SHARED:
                offenders.append(f"{relative} imports {name}")
    assert not offenders, "; ".join(offenders)


def test_every_file_a_stage_runs_is_among_its_deps():
    missing = []
    for name, (module, deps) in stages().items():
        for file in sorted(reached(ROOT / "tasks" / f"{module}.py")):
            # A package's face (__init__.py) hands names on; the files it imports are followed and checked.
            if not file.endswith("__init__.py") and not covered(file, deps):
                missing.append(f"{name}: {file}")
    assert not missing, "dvc.yaml deps miss: " + ", ".join(missing)


def test_the_check_follows_lazy_imports():
    files = reached(ROOT / "tasks" / "artifacts.py")
    assert "sclora/method/gather.py" in files  # imported inside capture_hashes only
