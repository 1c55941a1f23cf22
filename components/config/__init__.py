"""The whole stack configuration, parsed once and checked before any resource is registered.

Keys live under the project namespace (`llm-platform:<key>`) in `Pulumi.<stack>.yaml`. Every
model forbids unknown fields, so a misspelt key is refused instead of silently ignored.
"""


from __future__ import annotations

import json
import os
from typing import Any

import pulumi
from pydantic import ValidationError

from components.config.base import *  # noqa: F401,F403
from components.config.base import PROJECT, ConfigError
from components.config.cluster import *  # noqa: F401,F403
from components.config.errors import display_key as display_key, one_line
from components.config.models import *  # noqa: F401,F403
from components.config.monitoring import *  # noqa: F401,F403
from components.config.services import *  # noqa: F401,F403
from components.config.stack import *  # noqa: F401,F403
from components.config.stack import StackConfig
from components.config.team_models import TeamModel as TeamModel, load_team_models, quota_room as quota_room
from components.config.teams import *  # noqa: F401,F403
from components.config.virtual_keys import *  # noqa: F401,F403

# --- loading -------------------------------------------------------------------------------


def parse(raw: dict[str, Any], stack_file: str) -> StackConfig:
    """Validate raw config (keys without the project prefix); raise ConfigError on bad input."""
    try:
        return StackConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{stack_file}: {one_line(exc)}") from None


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
    cfg = parse(raw, stack_file)
    # Team folders are relative to the project (where Pulumi.yaml is), wherever the program runs.
    cfg._team_models = load_team_models(cfg, pulumi.get_root_directory() or os.getcwd(), stack_file)
    return cfg


def expand_path(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
