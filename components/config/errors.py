"""One line from a validation error: the key as the user wrote it, and what was expected."""

from __future__ import annotations

import json
import re

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from components.config.base import PROJECT
from components.config.cluster import CLUSTER_KINDS
from components.config.models import RUNTIMES


def _key_path(loc: tuple, prefix: str) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif (i == 1 and loc[0] == "cluster" and item in CLUSTER_KINDS) or (
            i == 2 and loc[0] == "models" and item in RUNTIMES
        ) or (i == 0 and not prefix and item in RUNTIMES):
            continue  # the union tag pydantic inserts, not a key the user wrote
        else:
            parts.append(("." if parts else prefix) + display_key(item))
    return "".join(parts) or prefix.rstrip(":")


def display_key(key: str) -> str:
    """A key as written in the stack file; odd ones (spaces, colons, empty) quoted."""
    return key if re.fullmatch(r"[A-Za-z_][\w-]*", key) else json.dumps(key)


def _message(err: ErrorDetails) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (check the spelling against docs/configuration.md)"
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        field = "runtime" if "runtime" in ctx["discriminator"] else "kind"
        return f"expected {field} to be one of {ctx['expected_tags']}, got {ctx['tag']!r}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind in ("literal_error", "int_parsing", "greater_than_equal",
                "less_than_equal", "string_pattern_mismatch", "too_short", "greater_than"):
        msg += f", got {err.get('input')!r}"
    return msg


def one_line(exc: ValidationError, prefix: str = f"{PROJECT}:") -> str:
    """"<key>: <what was expected>" for the first error; keys of a stack file carry the project's
    prefix, those of a model file none."""
    err = exc.errors()[0]
    key, msg = _key_path(err["loc"], prefix), _message(err)
    # Checks across fields name their own key first: "availabilityZones: expected ...".
    sub = re.match(r"^([a-zA-Z][\w.\[\]]*): (.*)$", msg)
    if err["type"] == "value_error" and sub:
        key = f"{key}.{sub.group(1)}" if key and key != prefix.rstrip(":") else f"{prefix}{sub.group(1)}"
        msg = sub.group(2)
    return f"{key}: {msg}" if key else msg
