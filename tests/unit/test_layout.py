"""The program's packages depend one way: core <- config <- cluster <- platform <- serving / edge.

Every import in components/ is checked, those inside functions and under TYPE_CHECKING included,
and so are `importlib.import_module("components...")` and `__import__(...)` calls: a module may
import its own package's modules and the packages below it, never one above or beside it (serving
and edge do not import each other), never its own package's index (which imports it back), and no
chain of imports runs in a circle. What runs inside a workload (files/) imports nothing of the
program and nothing of Pulumi."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Lower first. Packages on the same rank are siblings and may not import each other.
LAYERS = {"core": 0, "config": 1, "cluster": 2, "platform": 3, "serving": 4, "edge": 4}
DYNAMIC_IMPORTS = {"import_module", "__import__"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, wherever it stands."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports the module pkg.mod where there is one.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                as_path = root.joinpath(*sub.split("."))
                found.append((node.lineno, sub if as_path.with_suffix(".py").exists() or as_path.is_dir() else target))
        elif isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called in DYNAMIC_IMPORTS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    return [(line, mod) for line, mod in all_imports(path, root) if mod == "components" or mod.startswith("components.")]


def sources(root: Path) -> list[Path]:
    package = root / "components"
    return sorted(p for p in package.rglob("*.py") if p != package / "__init__.py" and "files" not in p.parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def wrong_imports(root: Path = ROOT) -> list[str]:
    wrong = []
    for path in sources(root):
        here_module = module_name(path, root)
        here = layer(here_module)
        own_package = here_module if path.name == "__init__.py" else here_module.rpartition(".")[0]
        assert here in LAYERS, f"{path.relative_to(root)}: in no layer; put it in one of {sorted(LAYERS)}"
        for line, target in imports(path, root):
            there = layer(target)
            where = f"{path.relative_to(root)}:{line} imports {target}"
            if there is None:
                wrong.append(f"{where}: the index of every layer (import the package itself)")
            elif path.name != "__init__.py" and target == own_package:
                wrong.append(f"{where}: its own package's index, which imports it (import the module)")
            elif there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{where}: {there} is {'beside' if LAYERS[there] == LAYERS[here] else 'above'} {here}")
    return wrong


def test_packages_depend_one_way():
    assert wrong_imports() == []


def test_no_import_cycle():
    graph = {module_name(p, ROOT): {t for _, t in imports(p, ROOT)} for p in sources(ROOT)}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert cycles == []


def probe(tmp_path: Path, where: str, code: str) -> list[str]:
    """The check run on a copy of the program with one module added."""
    shutil.copytree(ROOT / "components", tmp_path / "components", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "components" / where).write_text(code)
    return wrong_imports(tmp_path)


def test_the_check_sees_an_upward_import(tmp_path):
    """A cluster module that imports the serving layer (as the minikube module once did for the
    models mount) is reported with its file and line, inside a function too."""
    code = "def f():\n    from components.serving.runtimes import MODELS_MOUNT\n    return MODELS_MOUNT\n"
    assert probe(tmp_path, "cluster/probe.py", code) == [
        "components/cluster/probe.py:2 imports components.serving.runtimes: serving is above cluster"]


def test_the_check_sees_dynamic_imports_and_the_own_index(tmp_path):
    code = ("import importlib\nfrom components.platform import Mesh\n"
            "front = importlib.import_module('components.edge.front_door')\n")
    assert probe(tmp_path, "platform/probe.py", code) == [
        "components/platform/probe.py:2 imports components.platform: its own package's index, which imports it "
        "(import the module)",
        "components/platform/probe.py:3 imports components.edge.front_door: edge is above platform"]


def test_runtime_files_import_nothing_of_the_program_or_pulumi():
    """What runs inside a workload (files/ folders) is not Pulumi code."""
    for path in (ROOT / "components").rglob("files/**/*.py"):
        found = [m for _, m in all_imports(path, ROOT) if m.split(".")[0] in ("components", "pulumi", "pulumi_kubernetes")]
        assert found == [], path
