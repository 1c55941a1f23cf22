"""vLLM's own argument parser and env vars, read from the PyPI wheel of the release the images run.

Importing vllm needs torch; instead the wheel's Python sources are parsed (AST): the flags every
`add_argument` call names, the fields of the frontend-args dataclasses (each becomes a flag), the
field types of the engine and frontend args, and the keys of `vllm/envs.py`'s table. The wheel
(about 320 MB) is downloaded once into `.cache/vllm/` (gitignored): `python -m tools.vllm_wheel`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PROJECT_DIR = Path(__file__).resolve().parent.parent
WHEEL_DIR = PROJECT_DIR / ".cache" / "vllm"
# Dataclasses whose fields vLLM turns into `--kebab-case` flags or reads their types from.
FIELD_CLASSES = ("BaseFrontendArgs", "FrontendArgs", "EngineArgs", "AsyncEngineArgs")


def wheel_path(version: str) -> Optional[Path]:
    found = sorted(WHEEL_DIR.glob(f"vllm-{version}-*.whl"))
    return found[0] if found else None


def fetch(version: str) -> Path:
    """The wheel of `version`, downloaded (no dependencies) unless already cached."""
    if (path := wheel_path(version)) is None:
        WHEEL_DIR.mkdir(parents=True, exist_ok=True)
        for old in WHEEL_DIR.glob("vllm-*.whl"):  # a release no longer pinned
            old.unlink()
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary", ":all:", f"vllm=={version}", "--dest", str(WHEEL_DIR)], check=True)
        path = wheel_path(version)
    return path


@dataclass
class VllmCli:
    flags: set[str]
    # Field name -> its annotation as written (e.g. "int | None").
    field_types: dict[str, str]
    env_vars: set[str]

    def value_error(self, flag: str, value) -> Optional[str]:
        """Why `value` is no value for `flag` (by the field's declared type), or None."""
        kinds = {t.strip() for t in self.field_types.get(flag[2:].replace("-", "_"), "").split("|")} - {"None"}
        for kind, convert in (("int", int), ("float", float)):
            if kinds == {kind}:
                try:
                    convert(value)
                except (TypeError, ValueError):
                    return f"{flag} takes {kind}, got {value!r}"
        if kinds and all(k.startswith("list[") for k in kinds) and not isinstance(value, list):
            return f"{flag} takes a list, got {value!r}"
        return None


def _assigns(node, name: str) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


def read(wheel: Path) -> VllmCli:
    flags, field_types, env_vars = set(), {}, set()
    with zipfile.ZipFile(wheel) as whl:
        for name in whl.namelist():
            if not name.endswith(".py") or not name.startswith(("vllm/engine/", "vllm/entrypoints/")) \
                    and name != "vllm/envs.py":
                continue
            tree = ast.parse(whl.read(name))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
                    flags |= {a.value for a in node.args
                              if isinstance(a, ast.Constant) and isinstance(a.value, str) and a.value.startswith("-")}
                elif isinstance(node, ast.ClassDef) and node.name in FIELD_CLASSES:
                    for item in node.body:
                        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                            field_types.setdefault(item.target.id, ast.unparse(item.annotation))
                            if "FrontendArgs" in node.name:
                                flags.add("--" + item.target.id.replace("_", "-"))
                elif name == "vllm/envs.py" and isinstance(node, (ast.Assign, ast.AnnAssign)) \
                        and isinstance(node.value, ast.Dict) and _assigns(node, "environment_variables"):
                    env_vars |= {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
    return VllmCli(flags, field_types, env_vars)


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))
    from components.serving import VLLM_RELEASE

    print(fetch(VLLM_RELEASE))


# The module whose Prometheus logger declares the server's metrics.
METRICS_MODULE = "vllm/v1/metrics/loggers.py"


def gauges(wheel: Path) -> set[str]:
    """Names of the Prometheus gauges vLLM's metrics logger declares (`self._gauge_cls(name=...)`)."""
    with zipfile.ZipFile(wheel) as z:
        tree = ast.parse(z.read(METRICS_MODULE).decode())
    out = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_gauge_cls"):
            for kw in node.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    out.add(kw.value.value)
    return out
