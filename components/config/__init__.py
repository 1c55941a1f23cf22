"""The whole stack configuration, parsed once and checked before any resource is registered.

Keys live under the project namespace (`llm-platform:<key>`) in `Pulumi.<stack>.yaml`. Every
model forbids unknown fields, so a misspelt key is refused instead of silently ignored.
"""


from __future__ import annotations

import json
import os
import re
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from components.config.base import *  # noqa: F401,F403
from components.config.base import PROJECT, ConfigError
from components.config.cluster import *  # noqa: F401,F403
from components.config.cluster import CLUSTER_KINDS
from components.config.models import *  # noqa: F401,F403
from components.config.models import RUNTIMES
from components.config.monitoring import *  # noqa: F401,F403
from components.config.services import *  # noqa: F401,F403
from components.config.stack import *  # noqa: F401,F403
from components.config.stack import StackConfig
from components.config.virtual_keys import *  # noqa: F401,F403

# --- loading -------------------------------------------------------------------------------


def _key_path(loc: tuple) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif (i == 1 and loc[0] == "cluster" and item in CLUSTER_KINDS) or (
            i == 2 and loc[0] == "models" and item in RUNTIMES
        ):
            continue  # the union tag pydantic inserts, not a key the user wrote
        else:
            parts.append(("." if parts else f"{PROJECT}:") + display_key(item))
    return "".join(parts) or PROJECT


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


def parse(raw: dict[str, Any], stack_file: str) -> StackConfig:
    """Validate raw config (keys without the project prefix); raise ConfigError on bad input."""
    try:
        return StackConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key, msg = _key_path(err["loc"]), _message(err)
        # Checks across fields name their own key first: "availabilityZones: expected ...".
        sub = re.match(r"^([a-zA-Z][\w.\[\]]*): (.*)$", msg)
        if err["type"] == "value_error" and sub:
            key = f"{key}.{sub.group(1)}" if key != PROJECT else f"{PROJECT}:{sub.group(1)}"
            msg = sub.group(2)
        raise ConfigError(f"{stack_file}: {key}: {msg}") from None


SECRET_KEYS = ("hfToken", "apiKey", "uiAdminPassword", "providerKeys")


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
        return json.loads(value)
    return value


def load(stack: str) -> StackConfig:
    """Read every `llm-platform:*` key the engine passed to this program and parse it."""
    # The SDK has no public call listing all config keys; unknown top-level keys are only
    # caught by reading the map the engine filled.
    from pulumi.runtime.config import CONFIG, get_config_env, is_config_secret

    merged = {**get_config_env(), **CONFIG.get()}
    prefix = f"{PROJECT}:"
    raw = {k[len(prefix):]: _decode(v) for k, v in merged.items() if k.startswith(prefix)}
    stack_file = f"Pulumi.{stack}.yaml"
    for key in SECRET_KEYS:
        if key in raw and not is_config_secret(prefix + key):
            raise ConfigError(
                f"{stack_file}: {prefix}{key}: expected a secret; set it with "
                f"`pulumi config set --secret {key} ...` so it is never stored in plain text"
            )
    return parse(raw, stack_file)


def expand_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
