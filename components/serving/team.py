"""Team: what a team that serves its own models holds in the cluster besides its servers: the
namespace's quota (what the config check counted, enforced by the API server), its NetworkPolicies
and host-folder claim (as the platform's models namespace has them), and the team's API key."""

from __future__ import annotations

from typing import Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from components.serving.model_namespace import ModelNamespace, ModelNamespaceArgs

# LiteLLM's key format, which the ingress and the servers take like any other key.
TEAM_KEY_PREFIX = "sk-"
QUOTA_NAME = "team-quota"


def quota_hard(resource: Optional[str], units: int, memory: str) -> dict[str, str]:
    """The ResourceQuota's limits: the accelerator (extended resources are quoted by their
    requests alone) and the memory limits of every pod there, sidecars included."""
    return {**({f"requests.{resource}": str(units)} if resource else {}), "limits.memory": memory}


class TeamArgs(TypedDict):
    # The namespace's policies and claims, as for the platform's models namespace.
    namespace: ModelNamespaceArgs
    # The accelerator's extended resource (None: CPU only) and the team's quota.
    resource: Optional[str]
    accelerators: int
    memory: str
    # Whether the API asks keys: then the team gets its own.
    api_auth: bool


class Team(pulumi.ComponentResource):
    # The key the team's clients present (a Pulumi secret): the ingress lets it in, and only the
    # team's own servers accept it. None with an open API.
    key: Optional[pulumi.Output[str]]
    backend_key: Optional[pulumi.Output[str]]
    metrics_key: Optional[pulumi.Output[str]]
    host_models_claim: Optional[pulumi.Output[str]]
    quota: k8s.core.v1.ResourceQuota

    def __init__(self, name: str, args: TeamArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:Team", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        ns = args["namespace"]
        # Before any server: a pod created first would not be counted against the quota.
        self.quota = k8s.core.v1.ResourceQuota(
            f"{name}-quota",
            metadata={"name": QUOTA_NAME, "namespace": ns["namespace"]},
            spec={"hard": quota_hard(args["resource"], args["accelerators"], args["memory"])},
            opts=child,
        )
        namespace = ModelNamespace(f"{name}-namespace", ns, opts=child)
        self.host_models_claim = namespace.host_models_claim
        self.key = self.backend_key = self.metrics_key = None
        if args["api_auth"]:
            password = random.RandomPassword(f"{name}-key", length=48, special=False, opts=child)
            self.key = pulumi.Output.secret(pulumi.Output.concat(TEAM_KEY_PREFIX, password.result))
            # What the front door and the scraper present to the team's servers: keys of the
            # team's own, since whoever deploys into the namespace can read what its servers take.
            self.backend_key = pulumi.Output.secret(random.RandomPassword(
                f"{name}-backend-key", length=48, special=False, opts=child).result)
            self.metrics_key = pulumi.Output.secret(random.RandomPassword(
                f"{name}-metrics-key", length=48, special=False, opts=child).result)
        # What the team's servers wait for: their quota and their namespace's rules.
        self.ready: list[pulumi.Resource] = [self.quota, namespace]
        self.register_outputs({"hostModelsClaim": self.host_models_claim})
