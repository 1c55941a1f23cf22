"""vLLM's own argument parser and env vars, read from the PyPI wheel of the release the images run.

Importing vllm needs torch; instead the wheel's Python sources are parsed (AST): the flags every
`add_argument` call names, the fields of the frontend-args dataclasses (each becomes a flag), the
keys of `vllm/envs.py`'s table, and `vllm serve`'s parser rebuilt (below). The wheel
(about 320 MB) is downloaded once into `.cache/vllm/` (gitignored): `python -m tools.vllm_wheel`.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

PROJECT_DIR = Path(__file__).resolve().parent.parent
WHEEL_DIR = PROJECT_DIR / ".cache" / "vllm"


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
        assert path is not None, f"pip downloaded no wheel of vllm {version}"
    return path


@dataclass
class VllmCli:
    flags: set[str]
    env_vars: set[str]


def _assigns(node, name: str) -> bool:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return any(isinstance(t, ast.Name) and t.id == name for t in targets)


def read(wheel: Path) -> VllmCli:
    """Every flag any `add_argument` call or frontend-args dataclass names, and the env vars of
    `vllm/envs.py`'s table."""
    flags: set[str] = set()
    env_vars: set[str] = set()
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
                elif isinstance(node, ast.ClassDef) and "FrontendArgs" in node.name:
                    flags |= {"--" + item.target.id.replace("_", "-") for item in node.body
                              if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
                elif name == "vllm/envs.py" and isinstance(node, (ast.Assign, ast.AnnAssign)) \
                        and isinstance(node.value, ast.Dict) and _assigns(node, "environment_variables"):
                    env_vars |= {k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return VllmCli(flags, env_vars)


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))
    from components.serving.runtimes import VLLM_RELEASE

    print(fetch(VLLM_RELEASE))


# The module whose Prometheus logger declares the server's metrics.
METRICS_MODULE = "vllm/v1/metrics/loggers.py"


def gauges(wheel: Path) -> set[str]:
    """Names of the Prometheus gauges vLLM's metrics logger declares (`self._gauge_cls(name=...)`)."""
    with zipfile.ZipFile(wheel) as z:
        tree = ast.parse(z.read(METRICS_MODULE).decode())
    out: set[str] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "_gauge_cls"):
            for kw in node.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    out.add(kw.value.value)
    return out


# --- vLLM's `vllm serve` parser, rebuilt from the wheel ---------------------------------------
# Importing vLLM's parser needs torch (and building it runs the config classes' defaults, which
# probe the platform): instead the argparse parser is rebuilt from the wheel's sources by the
# rules of vLLM's `_compute_kwargs` (vllm/engine/arg_utils.py): a flag added with
# `**<group>_kwargs["field"]` takes its kind from that config field's type hints, in vLLM's
# order: a dataclass -> JSON; `bool | str | None` -> an optional value; `bool` ->
# BooleanOptionalAction (`--x` / `--no-x`, no value); `Literal[...]` -> choices (only a value
# when `str` is in the union too); tuple/list/set -> nargs "+"; int (human-readable for the
# sizes vLLM names) ; float; dict -> JSON; str or anything else -> str; `None` in the union ->
# "None" accepted. Explicit keywords on the call (choices, action, type, nargs) and the
# `<name>_kwargs["field"]["key"] = ...` edits (`_customize_cli_kwargs`) win, as in vLLM. Then
# the arguments go through real `argparse` with vLLM's FlexibleArgumentParser rewrites
# (underscores in flag names, `--config` YAML turned into arguments).

PARSER_MODULES = ("vllm/engine/arg_utils.py", "vllm/entrypoints/launchers/cli_args.py")
# Where the type aliases and config classes those flags name are defined.
TYPE_MODULES = ("vllm/config/", "vllm/engine/arg_utils.py", "vllm/entrypoints/launchers/cli_args.py",
                "vllm/model_executor/layers/quantization/__init__.py",
                "vllm/model_executor/model_loader/__init__.py")
# The int field `_compute_kwargs` gives `human_readable_int_or_auto` ("auto", -1, 8k, 8K); the
# ones it gives `human_readable_int` are read from its `human_readable_int_args` set.
HUMAN_READABLE_INT_OR_AUTO = {"max_model_len"}
_BUILTIN_SCALARS = {"bool", "int", "float", "str", "None", "dict", "list", "tuple", "set", "Any", "object"}


@dataclass
class _Types:
    aliases: dict          # name -> annotation AST
    classes: dict          # name -> (field name -> annotation AST), fields of bases included
    dataclasses: set       # class names decorated as (pydantic or vLLM config) dataclasses


def _type_sources(whl: zipfile.ZipFile) -> _Types:
    aliases: dict[str, ast.expr] = {}
    classes: dict[str, dict[str, ast.expr]] = {}
    bases: dict[str, list[str]] = {}
    decorated: set[str] = set()
    for name in whl.namelist():
        if not name.endswith(".py") or not any(name.startswith(m) for m in TYPE_MODULES):
            continue
        tree = ast.parse(whl.read(name))
        for node in tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                aliases.setdefault(node.targets[0].id, node.value)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None \
                    and ast.unparse(node.annotation) in ("TypeAlias", "typing.TypeAlias"):
                aliases.setdefault(node.target.id, node.value)
            elif isinstance(node, ast.ClassDef):
                fields = {item.target.id: item.annotation for item in node.body
                          if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                          and not ast.unparse(item.annotation).startswith("ClassVar")}
                classes.setdefault(node.name, fields)
                bases.setdefault(node.name, [ast.unparse(b) for b in node.bases])
                if any(ast.unparse(d).split("(")[0].split(".")[-1] in ("config", "dataclass") for d in node.decorator_list):
                    decorated.add(node.name)
    merged = {}
    for cls in classes:
        fields, todo, seen = {}, [cls], set()
        while todo:
            c = todo.pop(0)
            if c in seen or c not in classes:
                continue
            seen.add(c)
            for k, v in classes[c].items():
                fields.setdefault(k, v)
            todo += bases.get(c, [])
        merged[cls] = fields
    return _Types(aliases, merged, decorated)


def _hints(node: ast.AST, types: _Types, depth: int = 0) -> list:
    """The type hints of an annotation, flattened as vLLM's `get_type_hints` does: unions and
    Annotated unwrapped, aliases resolved. Each hint: ("name", n), ("literal", values),
    ("generic", origin, args), ("dataclass", name) or ("other", text)."""
    if depth > 20:
        return [("other", ast.unparse(node))]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _hints(node.left, types, depth + 1) + _hints(node.right, types, depth + 1)
    if isinstance(node, ast.Constant) and node.value is None:
        return [("name", "None")]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a forward reference
        return _hints(ast.parse(node.value, mode="eval").body, types, depth + 1)
    if isinstance(node, ast.Subscript):
        origin = ast.unparse(node.value).split(".")[-1]
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if origin in ("Union", "Optional"):
            out = [h for a in args for h in _hints(a, types, depth + 1)]
            return out + ([("name", "None")] if origin == "Optional" else [])
        if origin == "Annotated":
            return _hints(args[0], types, depth + 1)
        if origin == "Literal":
            values = []
            for a in args:
                if isinstance(a, ast.Constant):
                    values.append(a.value)
                else:  # a Literal of aliases of Literals
                    for h in _hints(a, types, depth + 1):
                        values += list(h[1]) if h[0] == "literal" else []
            return [("literal", tuple(values))]
        return [("generic", origin.lower(), args)]
    name = ast.unparse(node).split(".")[-1]
    if name in _BUILTIN_SCALARS:
        return [("name", name)]
    if name in types.aliases and name not in types.classes:
        return _hints(types.aliases[name], types, depth + 1)
    if name in types.dataclasses:
        return [("dataclass", name)]
    return [("other", name)]


@dataclass
class FlagSpec:
    """How vLLM's parser takes one option."""

    names: tuple
    action: Optional[str] = None       # "boolean_optional", "store_true", "store_false", "custom"
    value: str = "str"                 # "str", "int", "float", "json", "human_int", "human_int_or_auto", "any"
    choices: Optional[list] = None
    nargs: Optional[object] = None
    const: Optional[object] = None
    optional: bool = False             # takes "None"


def _spec_from_field(field: str, annotation: ast.AST, types: _Types, human_ints: set) -> FlagSpec:
    hints = _hints(annotation, types)
    kinds = {h[1] if h[0] == "name" else h[0] if h[0] != "generic" else h[1] for h in hints}
    spec = FlagSpec(names=())
    has = lambda k: k in kinds  # noqa: E731
    literal = next((h[1] for h in hints if h[0] == "literal"), None)
    if has("dataclass"):
        spec.value = "json"
    elif kinds == {"bool", "str", "None"}:
        spec.value, spec.nargs, spec.const = "str", "?", True
    elif has("bool"):
        spec.action = "boolean_optional"
    elif literal is not None:
        spec.value = {int: "int", float: "float"}.get(type(literal[0]), "str")
        if not has("str"):
            spec.choices = sorted(literal)
    elif has("tuple") or has("list") or has("set"):
        generic = next(h for h in hints if h[0] == "generic" and h[1] in ("tuple", "list", "set"))
        elem = _hints(generic[2][0], types) if generic[2] else [("name", "str")]
        lit = next((h[1] for h in elem if h[0] == "literal"), None)
        names = {h[1] for h in elem if h[0] == "name"}
        spec.value = "int" if names == {"int"} else "float" if names == {"float"} else "str"
        if lit is not None and len(elem) == 1:
            spec.choices = sorted(lit)
        ellipsis = any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in generic[2])
        spec.nargs = "+" if generic[1] != "tuple" or ellipsis else len(generic[2])
    elif has("int"):
        spec.value = ("human_int_or_auto" if field in HUMAN_READABLE_INT_OR_AUTO
                      else "human_int" if field in human_ints else "int")
    elif has("float"):
        spec.value = "float"
    elif has("dict"):
        spec.value = "json" if not (has("str") or has("other") or has("dataclass")) else "any"
    else:
        spec.value = "str"
    if "None" in kinds and not has("bool"):
        spec.optional = True
        if spec.choices is not None:
            spec.choices = [*spec.choices, "None"]
    return spec


def _flag_names(call: ast.Call) -> list[str]:
    return [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
            and a.value.startswith("-")]


def _kwargs_ref(node: ast.AST) -> Optional[tuple[str, str]]:
    """`NAME["field"]` -> (NAME, field)."""
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) \
            and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
        return node.value.id, node.slice.value
    return None


def _apply_keyword(spec: FlagSpec, key: str, value: Optional[ast.AST]) -> None:
    if value is None:  # `del kwargs[field][key]`
        setattr(spec, key, None) if key in ("choices", "nargs", "const", "action") else None
        return
    text = ast.unparse(value)
    if key == "choices":
        try:
            spec.choices = list(ast.literal_eval(value))
        except ValueError:
            spec.choices = None  # computed at run time (registries): any value
    elif key == "action":
        spec.action = {"argparse.BooleanOptionalAction": "boolean_optional", "BooleanOptionalAction": "boolean_optional",
                       "'store_true'": "store_true", "'store_false'": "store_false"}.get(text, "custom")
        if spec.action in ("store_true", "store_false", "boolean_optional"):
            spec.nargs = None
    elif key == "type":
        wrapped = text.startswith("optional_type(")
        spec.optional = wrapped or spec.optional
        inner = text[len("optional_type("):-1] if wrapped else text
        spec.value = {"int": "int", "float": "float", "str": "str", "json.loads": "json",
                      "human_readable_int": "human_int", "human_readable_int_or_auto": "human_int_or_auto",
                      "lambda s: s.lower().replace('-', '_')": "lower_snake"}.get(inner, "any")
    elif key == "nargs":
        spec.nargs = ast.literal_eval(value)
    elif key == "const":
        spec.const = True


def _subclasses(trees: list, name: str) -> list[str]:
    """`name` and the classes of the parser modules derived from it."""
    bases = {n.name: [ast.unparse(b) for b in n.bases] for t in trees for n in ast.walk(t) if isinstance(n, ast.ClassDef)}
    out, changed = [name], True
    while changed:
        changed = False
        for cls, parents in bases.items():
            if cls not in out and any(p in out for p in parents):
                out.append(cls)
                changed = True
    return out


def serve_flags(wheel: Path) -> dict[str, FlagSpec]:
    """Option string -> how `vllm serve` takes it, read from the wheel (see above)."""
    with zipfile.ZipFile(wheel) as whl:
        types = _type_sources(whl)
        trees = [ast.parse(whl.read(m)) for m in PARSER_MODULES]
    specs: dict[str, FlagSpec] = {}
    human_ints = {e.value for t in trees for n in ast.walk(t)
                  if isinstance(n, ast.Assign) and _assigns(n, "human_readable_int_args") and isinstance(n.value, ast.Set)
                  for e in n.value.elts if isinstance(e, ast.Constant)}

    def field_spec(cls: str, field: str) -> FlagSpec:
        annotation = types.classes.get(cls, {}).get(field)
        return (_spec_from_field(field, annotation, types, human_ints) if annotation is not None
                else FlagSpec(names=(), value="any"))

    # `NAME["field"]["key"] = value` edits, wherever they are made (vLLM's frontends edit their
    # kwargs in `_customize_cli_kwargs`, before `add_cli_args` registers them).
    edits: dict[tuple[str, str], list] = {}
    for tree in trees:
        for node in ast.walk(tree):
            targets = (node.targets if isinstance(node, ast.Assign) and len(node.targets) == 1
                       else node.targets if isinstance(node, ast.Delete) else [])
            for target in targets:
                if isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant):
                    # NAME["field"]["key"] = ..., or ALIAS["key"] = ... where ALIAS = NAME["field"]
                    ref = _kwargs_ref(target.value) or (
                        (target.value.id, "") if isinstance(target.value, ast.Name) else None)
                    if ref:  # a deleted key goes back to argparse's default
                        edits.setdefault(ref, []).append(
                            (target.slice.value, node.value if isinstance(node, ast.Assign) else None))

    def edited(spec: FlagSpec, ref: tuple[str, str]) -> FlagSpec:
        for key, value in edits.get(ref, []):
            _apply_keyword(spec, key, value)
        return spec

    # (owning class or None, function) for every method and module-level function.
    functions: list[tuple[Optional[str], ast.FunctionDef]] = [
        (cls_node.name, fn) for tree in trees for cls_node in ast.walk(tree) if isinstance(cls_node, ast.ClassDef)
        for fn in cls_node.body if isinstance(fn, ast.FunctionDef)]
    functions += [(None, fn) for tree in trees for fn in tree.body if isinstance(fn, ast.FunctionDef)]
    for owner, fn in functions:
                kwargs_of: dict[str, list[str]] = {}   # NAME -> the config classes of NAME = get_kwargs(Cls)
                field_alias: dict[str, tuple[str, str]] = {}  # ALIAS = NAME["field"]
                for node in ast.walk(fn):
                    if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                            and ast.unparse(node.value.func).endswith("get_kwargs") and node.value.args:
                        arg = ast.unparse(node.value.args[0])
                        for t in node.targets:
                            if isinstance(t, ast.Name):
                                kwargs_of[t.id] = _subclasses(trees, owner) if arg == "cls" and owner else [arg]
                    elif isinstance(node, ast.Assign) and len(node.targets) == 1 \
                            and isinstance(node.targets[0], ast.Name) and (aliased := _kwargs_ref(node.value)):
                        field_alias[node.targets[0].id] = aliased
                for node in ast.walk(fn):
                    if not (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument"):
                        continue
                    names, spec, dynamic = _flag_names(node), None, False
                    for kw in node.keywords:
                        if kw.arg is not None:
                            continue
                        parts = [(None, kw.value)] if not isinstance(kw.value, ast.Dict) else \
                            list(zip(kw.value.keys, kw.value.values, strict=True))
                        for key, value in parts:
                            ref = _kwargs_ref(value) if key is None else None
                            alias = value.id if key is None and isinstance(value, ast.Name) else None
                            if alias in field_alias and field_alias[alias][0] in kwargs_of:
                                ref = field_alias[alias]
                                spec = edited(edited(field_spec(kwargs_of[ref[0]][0], ref[1]), ref), (alias, ""))
                            elif ref and ref[0] in kwargs_of:
                                spec = edited(field_spec(kwargs_of[ref[0]][0], ref[1]), ref)
                            elif key is None and isinstance(value, ast.Name):
                                dynamic = True  # `**value` in a loop over a class's kwargs
                            elif isinstance(key, ast.Constant) and isinstance(key.value, str) and spec is not None:
                                _apply_keyword(spec, key.value, value)
                    if dynamic:
                        name = next((f.iter.func.value.id for f in ast.walk(fn)
                                     if isinstance(f, ast.For) and isinstance(f.iter, ast.Call)
                                     and isinstance(f.iter.func, ast.Attribute)
                                     and isinstance(f.iter.func.value, ast.Name)
                                     and f.iter.func.value.id in kwargs_of), None)
                        if name is None:
                            continue
                        for cls in kwargs_of[name]:
                            for field in types.classes.get(cls, {}):
                                s = edited(field_spec(cls, field), (name, field))
                                s.names = (f"--{field.replace('_', '-')}",)
                                specs.setdefault(s.names[0], s)
                        continue
                    if not names:
                        continue
                    spec = spec or FlagSpec(names=())
                    for kw in node.keywords:
                        if kw.arg is not None:
                            _apply_keyword(spec, kw.arg, kw.value)
                    spec.names = tuple(names)
                    for n in names:
                        specs[n] = spec
    return specs


class VllmArgsError(ValueError):
    """What `vllm serve` would refuse, in argparse's words."""


def _human_int(value: str) -> int:
    """vLLM's human_readable_int: 1k = 1000, 1K = 1024 (no decimals with K/M/G/T), else an int."""
    value = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if m:
        number, suffix = m.groups()
        if suffix in "kmgt":
            return int(float(number) * 10 ** (3 * ("kmgt".index(suffix) + 1)))
        return int(number) * 2 ** (10 * ("KMGT".index(suffix) + 1))
    return int(value)


def _converter(spec: FlagSpec):
    converters: dict[str, Callable[[str], Any]] = {
        "int": int, "float": float, "str": str, "any": str, "json": json.loads, "human_int": _human_int,
        "human_int_or_auto": lambda v: -1 if v.strip() == "-1" or v.strip().lower() == "auto" else _human_int(v),
        "lower_snake": lambda v: v.lower().replace("-", "_"),
    }
    base = converters[spec.value]

    def convert(value: str):
        if spec.optional and value == "None":
            return None
        try:
            return base(value)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(f"invalid {spec.value} value: {value!r}") from err

    convert.__name__ = spec.value
    return convert


def build_serve_parser(specs: dict[str, FlagSpec]) -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message):  # raise, rather than print and exit
            raise VllmArgsError(message)

    parser = Parser(prog="vllm serve", add_help=False, allow_abbrev=False)
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--config")
    for spec in {id(s): s for s in specs.values()}.values():
        names = [n for n in spec.names if n != "--config"]
        if not names:
            continue
        if spec.action == "boolean_optional":
            parser.add_argument(*names, action=argparse.BooleanOptionalAction)
        elif spec.action in ("store_true", "store_false"):
            parser.add_argument(*names, action=spec.action)
        else:
            kwargs: dict = {"type": _converter(spec)}
            if spec.choices is not None:
                kwargs["choices"] = [(_converter(spec)(str(c)) if c != "None" else None) for c in spec.choices]
            if spec.nargs is not None:
                kwargs["nargs"] = spec.nargs
            if spec.const is not None:
                kwargs["const"] = spec.const
            if spec.action == "custom":
                kwargs.pop("choices", None)
            parser.add_argument(*names, **kwargs)
    return parser


def config_file_args(config: dict, specs: dict[str, FlagSpec]) -> list[str]:
    """A `--config` YAML as vLLM's FlexibleArgumentParser turns it into arguments: true -> the
    flag alone, false -> its `--no-` form where there is one, a list -> the flag and each item,
    a map -> JSON, anything else -> the flag and its text."""
    out: list[str] = []
    for key, value in config.items():
        if isinstance(value, bool):
            if value:
                out.append(f"--{key}")
            elif f"--no-{key}" in specs or (specs.get(f"--{key}") and specs[f"--{key}"].action == "boolean_optional"):
                out.append(f"--no-{key}")
        elif isinstance(value, list):
            if value:
                out += [f"--{key}", *(str(v) for v in value)]
        elif isinstance(value, dict):
            out += [f"--{key}", json.dumps(value)]
        else:
            out += [f"--{key}", str(value)]
    return out


def _dashed(args: list[str]) -> list[str]:
    """FlexibleArgumentParser's spelling rule: underscores in a flag's name become dashes."""
    out = []
    for arg in args:
        if arg.startswith("--"):
            key, eq, value = arg.partition("=")
            out.append(key.replace("_", "-") + eq + value)
        else:
            out.append(arg)
    return out


def parse_serve_args(specs: dict[str, FlagSpec], args: list[str], config: Optional[dict] = None) -> argparse.Namespace:
    """Parse `vllm serve` arguments (the model first) as the pinned release would, the `--config`
    file's content given as `config`; raises VllmArgsError with argparse's message."""
    argv = _dashed(list(args))
    if config is not None:
        if "--config" in argv:
            i = argv.index("--config")
            argv = argv[:i] + argv[i + 2:]
        argv += config_file_args(config, specs)
    return build_serve_parser(specs).parse_args(argv)
