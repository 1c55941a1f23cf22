"""The program's packages depend one way: core <- config <- cluster <- platform <- serving / edge.

Every import in components/ is checked, those inside functions and under TYPE_CHECKING
included: a module may import its own package and the packages below it, never one above or
beside it (serving and edge do not import each other), and no chain of imports runs in a
circle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "components"
# Lower first. Packages on the same rank are siblings and may not import each other.
LAYERS = {"core": 0, "config": 1, "cluster": 2, "platform": 3, "serving": 4, "edge": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file, wherever it stands."""
    name = module_name(path)
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
                as_path = ROOT.joinpath(*sub.split("."))
                found.append((node.lineno, sub if as_path.with_suffix(".py").exists() or as_path.is_dir() else target))
    return [(line, mod) for line, mod in found if mod == "components" or mod.startswith("components.")]


def sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def upward_imports() -> list[str]:
    wrong = []
    for path in sources():
        here = layer(module_name(path))
        assert here in LAYERS, f"{path.relative_to(ROOT)}: in no layer; put it in one of {sorted(LAYERS)}"
        for line, target in imports(path):
            there = layer(target)
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if there is None:
                wrong.append(f"{where}: the index of every layer (import the package itself)")
            elif there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{where}: {there} is {'beside' if LAYERS[there] == LAYERS[here] else 'above'} {here}")
    return wrong


def test_packages_depend_one_way():
    assert upward_imports() == []


def test_no_import_cycle():
    graph = {module_name(p): {t for _, t in imports(p)} for p in sources()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            # A package's __init__ importing its own modules is the index, not a cycle.
            if nxt not in graph or node.startswith(nxt + ".") :
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


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself can fail: a cluster module that imports the serving layer (as the
    minikube module once did for the models mount) is reported with its file and line."""
    fake = PACKAGE / "cluster" / "_upward_probe.py"
    fake.write_text("def f():\n    from components.serving.runtimes import MODELS_MOUNT\n    return MODELS_MOUNT\n")
    try:
        assert upward_imports() == [
            "components/cluster/_upward_probe.py:2 imports components.serving.runtimes: serving is above cluster"]
    finally:
        fake.unlink()


def test_runtime_files_are_not_pulumi_code():
    """What runs inside a workload (files/ folders) imports nothing of the program."""
    for path in PACKAGE.rglob("files/**/*.py"):
        assert imports(path) == [], path
