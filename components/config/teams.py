"""Teams: who serves models of their own, from a folder of model files each, within a quota."""

from __future__ import annotations

import re
from typing import Optional

from pydantic import Field, field_validator, model_validator

from components.config.base import DnsLabel, Quantity, _Model
from components.config.models import Price

# Where a stack finds its teams' model files: <dir>/<team>/<model>.yaml, relative to the project.
TEAM_MODELS_DIR = "models"
# A CODEOWNERS owner: @user, @org/team or an e-mail address.
_OWNER = re.compile(r"^(@[A-Za-z0-9-]+(/[A-Za-z0-9._-]+)?|[^@\s]+@[^@\s]+\.[^@\s]+)$")


def team_namespace(team: str) -> str:
    """The namespace a team's servers run in when its entry names none."""
    return f"team-{team}"


class TeamBudget(_Model):
    """What the team's key may spend at the front door: it becomes one of the front door's virtual
    keys (`frontDoor.virtualKeys`), which refuses the key once its spend reaches `maxBudget`."""

    max_budget: float = Field(gt=0)
    """US dollars per `budgetDuration`, counted at the team's models' `price`."""
    budget_duration: str = Field("30d", pattern=r"^[1-9][0-9]*(s|m|h|d|mo)$")
    """How often the spend starts again from zero: a number and `s`, `m`, `h`, `d` or `mo`
    (`30d`: on the first of each month)."""
    rpm_limit: Optional[int] = Field(None, ge=1)
    """Requests per minute the key may make; none: no limit."""
    tpm_limit: Optional[int] = Field(None, ge=1)
    """Tokens per minute the key may use; none: no limit."""


class TeamConfig(_Model):
    """A team that serves its own models: each a file `<teamModelsDir>/<team>/<model>.yaml`, in
    the shape of a `models` entry, run in the team's own namespace within its quota."""

    accelerators: int = Field(0, ge=0)
    """Accelerator units (GPUs, TPU chips, shares of the Vulkan device) the team's servers may hold
    together, counted at their most replicas: checked against the team's files before anything
    is created, and a ResourceQuota on the namespace enforces it after."""
    memory: Quantity
    """Memory limits the team's server pods may hold together (each pod's limit plus its mesh
    sidecar's, 1Gi, which the mesh sets), checked and enforced as `accelerators` is."""
    namespace: Optional[DnsLabel] = None
    """The team's namespace. Default: `team-<team>`."""
    owners: list[str] = []
    """Who reviews changes to the team's folder: `@user`, `@org/team` or an e-mail, written into
    `.github/CODEOWNERS` by `python -m tools.teams codeowners`."""

    price: Optional[Price] = None
    """What the tokens of every model of the team cost (US dollars per million), set here, where
    the platform reviews it, not in the team's files; needed with `budget`."""
    budget: Optional[TeamBudget] = None
    """What the team's key may spend; needs `frontDoor.virtualKeys.enabled` and `price`. None: the
    key spends without a limit."""

    @model_validator(mode="after")
    def _a_budget_counts_at_a_price(self) -> "TeamConfig":
        if self.budget and self.price is None:
            raise ValueError("budget: expected a price beside it (price: {input: ..., output: ...}, US dollars "
                             "per million tokens): without one the team's requests spend nothing")
        return self

    @field_validator("owners")
    @classmethod
    def _code_owners(cls, owners: list[str]) -> list[str]:
        """each `@user`, `@org/team` or an e-mail address"""
        for owner in owners:
            if not _OWNER.match(owner):
                raise ValueError(f"expected @user, @org/team or an e-mail address, got {owner!r}")
        return owners

    def namespace_of(self, team: str) -> str:
        return self.namespace or team_namespace(team)
