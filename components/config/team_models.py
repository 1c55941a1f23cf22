"""The teams' model files: each checked by the same models as a stack's `models` entry, then
against the cluster, the team's quota and every other model's name, failing in one line that
names the file and the key."""

from __future__ import annotations

import os
from dataclasses import dataclass

import yaml
from pydantic import TypeAdapter, ValidationError

from components.config.base import ConfigError
from components.config.errors import one_line
from components.config.models import AnyModel, ServedModel, quantity_bytes
from components.config.stack import StackConfig, model_fits, replicas_key
from components.config.teams import TeamConfig

# Every server pod of a team carries the mesh's sidecar, whose memory limit the quota counts too.
from components.core.sidecar import SIDECAR_MEMORY_LIMIT

MODEL_FILE_SUFFIXES = (".yaml", ".yml")

_ANY_MODEL: TypeAdapter[ServedModel] = TypeAdapter(AnyModel)


@dataclass(frozen=True)
class TeamModel:
    """A model a team serves, and the file it came from (as the user names it)."""

    team: str
    namespace: str
    file: str
    model: ServedModel


def pod_memory_bytes(model: ServedModel) -> int:
    """The memory limit one server pod holds: the server's and its sidecar's."""
    return quantity_bytes(model.resources.memory_limit) + quantity_bytes(SIDECAR_MEMORY_LIMIT)


def footprint(cfg: StackConfig, model: ServedModel, replicas: int) -> tuple[int, int]:
    """Accelerator units and bytes of memory limits `replicas` pods of `model` hold: what a
    team's quota counts."""
    return cfg.units_per_replica(model) * replicas, pod_memory_bytes(model) * replicas


# Beside the model files, a team's folder may hold its notes and hidden files (.gitkeep), nothing
# else: a file the check would skip would be a model that silently never deploys.
NOT_MODELS = ("README.md", "README")


def _files(root: str, team: str, shown_root: str) -> list[str]:
    folder = os.path.join(root, team)
    if not os.path.isdir(folder):
        return []
    found = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or name in NOT_MODELS:
            continue
        if not name.endswith(MODEL_FILE_SUFFIXES) or not os.path.isfile(path):
            raise ConfigError(f"{os.path.join(shown_root, team, name)}: expected a model file <model>.yaml in the "
                              f"team's folder (no other files or folders), got {name!r}")
        found.append(path)
    return found


def _read(path: str, shown: str) -> ServedModel:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{shown}: cannot be read ({err.__class__.__name__})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        why = " ".join(str(getattr(err, "problem", None) or getattr(err, "reason", None) or "unreadable").split())
        raise ConfigError(f"{shown}: not valid YAML{where}: {why}") from None
    except RecursionError:
        raise ConfigError(f"{shown}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{shown}: expected a mapping of a model's keys (name, runtime, ...), "
                          f"got {type(raw).__name__}")
    stem = os.path.splitext(os.path.basename(path))[0]
    raw.setdefault("name", stem)
    if raw["name"] != stem:
        raise ConfigError(f"{shown}: name: expected {stem!r}, the file's own name, got {raw['name']!r}")
    try:
        return _ANY_MODEL.validate_python(raw)
    except ValidationError as exc:
        raise ConfigError(f"{shown}: {one_line(exc, prefix='')}") from None


def load_team_models(cfg: StackConfig, project_dir: str, stack_file: str) -> list[TeamModel]:
    """Every model file of every team the stack serves, checked; raise ConfigError on the first
    bad one."""
    if not cfg.teams:
        return []
    root = os.path.join(project_dir, os.path.expanduser(cfg.team_models_dir))
    names = {m.name: f"{stack_file}: models" for m in cfg.models}
    names.update({p.name: f"{stack_file}: frontDoor.providers" for p in cfg.front_door.providers})
    capacity = cfg.capacity
    cluster_units = cfg.platform_units
    loaded: list[TeamModel] = []
    for team, team_cfg in sorted(cfg.teams.items()):
        units, memory = 0, 0
        for path in _files(root, team, cfg.team_models_dir):
            shown = os.path.join(cfg.team_models_dir, team, os.path.basename(path))
            model = _read(path, shown)
            problem = model_fits(model, cfg.accelerator.kind, cfg.pool) or cfg.autoscaling_problem(model)
            if problem:
                raise ConfigError(f"{shown}: {problem}")
            if model.price is not None:
                # The team's own folder would set what its budget is counted at.
                raise ConfigError(f"{shown}: price: a team's models are priced by the platform, in "
                                  f"teams.{team}.price in {stack_file}; leave it out here")
            if model.name in names:
                raise ConfigError(f"{shown}: name: {model.name!r} is already served ({names[model.name]}); "
                                  f"expected a name of its own")
            names[model.name] = shown
            model_units, model_memory = footprint(cfg, model, model.most_replicas)
            units, memory = units + model_units, memory + model_memory
            _within_quota(team, team_cfg, model, units, memory, shown, stack_file, cfg.accelerator.kind)
            cluster_units += model_units
            if capacity and cluster_units > capacity[0]:
                raise ConfigError(f"{shown}: {replicas_key(model)}: the stack's models and the teams' need "
                                  f"{cluster_units} {cfg.accelerator.kind} units in all, the cluster offers "
                                  f"{capacity[0]} ({capacity[1]})")
            loaded.append(TeamModel(team, team_cfg.namespace_of(team), shown, model))
    return loaded


def _within_quota(team: str, quota: TeamConfig, model: ServedModel, units: int, memory: int, shown: str,
                  stack_file: str, accel: str) -> None:
    key = replicas_key(model)
    if units > quota.accelerators:
        raise ConfigError(f"{shown}: {key}: team {team}'s models need {units} {accel} units at their most "
                          f"replicas, its quota is {quota.accelerators} ({stack_file}: teams.{team}.accelerators)")
    if memory > quantity_bytes(quota.memory):
        raise ConfigError(f"{shown}: {key}: team {team}'s server pods need {_gi(memory)} of memory limits at "
                          f"their most replicas (each pod's resources.memoryLimit plus {SIDECAR_MEMORY_LIMIT} for "
                          f"its sidecar), its quota is {quota.memory} ({stack_file}: teams.{team}.memory)")


def _gi(size: int) -> str:
    return f"{size / 2**30:g}Gi"


def quota_room(cfg: StackConfig, team: str, model: ServedModel) -> bool:
    """Whether the team's quota admits one pod of `model` beyond every server of the team at its
    most replicas: the surge pod of a rolling update."""
    quota = cfg.teams[team]
    pods = [footprint(cfg, t.model, t.model.most_replicas) for t in cfg.team_models if t.team == team]
    pods.append(footprint(cfg, model, 1))
    return (sum(u for u, _ in pods) <= quota.accelerators
            and sum(m for _, m in pods) <= quantity_bytes(quota.memory))
