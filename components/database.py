"""KeysDatabase: PostgreSQL for the front door's virtual keys (budgets, rate limits, spend).
The CloudNativePG operator from its Helm chart runs one `Cluster` in a namespace of its own,
outside the mesh, that only the front door (and the operator) may reach. The owner's password is
generated and lives only in Secrets; the front door gets its connection URL from one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from .mesh import pod_security_labels
from .model_namespace import NAMESPACE_LABEL, outside_ranges
from .chart_source import release_source

CNPG_REPO = "https://cloudnative-pg.github.io/charts"
CNPG_CHART = "cloudnative-pg"
CNPG_RELEASE = "cnpg"
# The chart's selector labels on the operator pod (app.kubernetes.io/name is the chart name).
OPERATOR_POD_LABELS = {"app.kubernetes.io/name": CNPG_CHART, "app.kubernetes.io/instance": CNPG_RELEASE}
# Operator 1.30.0's own default (pkg/versions), pinned so an operator upgrade never moves the
# PostgreSQL major version under the data.
POSTGRES_IMAGE = "ghcr.io/cloudnative-pg/postgresql:18.4-system-trixie"
CLUSTER_NAME = "litellm-db"
DATABASE = "litellm"
OWNER = "litellm"
POSTGRES_PORT = 5432
# The instance manager's status endpoint in every PostgreSQL pod, which the operator polls
# (pkg/management/url: StatusPort).
STATUS_PORT = 8000
# Where the API server listens as pods reach it: the `kubernetes` Service (443) or, after its
# translation, the server itself (443 on EKS and GKE, 6443 or 8443 elsewhere). The instance
# manager in each PostgreSQL pod watches its Cluster through it.
API_SERVER_PORTS = (443, 6443, 8443)
# The operator's read-write Service for a Cluster: `<cluster>-rw`, on the primary.
RW_SERVICE = f"{CLUSTER_NAME}-rw"
URL_SECRET = "litellm-database"
URL_KEY = "DATABASE_URL"
# PostgreSQL pods' requests; LiteLLM's tables are small (keys, teams, spend logs).
RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


@dataclass(frozen=True)
class DatabaseConnection:
    """What the front door needs: the Secret with DATABASE_URL in its namespace, and where the
    database answers (for its sidecar and NetworkPolicies)."""

    secret_name: pulumi.Output[str]
    secret_key: str
    namespace: str
    host: str
    port: int
    # Applied before the front door starts with the URL: the Secret, and the Cluster (which
    # `up` waits for until it is Ready).
    ready: Sequence[pulumi.Resource]


class KeysDatabaseArgs(TypedDict):
    provider: k8s.Provider
    chart_version: str
    operator_namespace: str
    namespace: str
    instances: int
    storage_size: str
    # None: the cluster's default StorageClass.
    storage_class: Optional[pulumi.Input[str]]
    # The front door's namespace: the URL Secret goes there, and only its pods may connect.
    client_namespace: pulumi.Input[str]
    network_policies: bool
    cluster_cidrs: Sequence[pulumi.Input[str]]


def database_url(password: pulumi.Input[str], namespace: str) -> pulumi.Output[str]:
    # PostgreSQL's TLS (the operator issues the server certificate) carries the password;
    # `require` because the client has no CA to verify against.
    return pulumi.Output.concat(f"postgresql://{OWNER}:", password,
                                f"@{RW_SERVICE}.{namespace}.svc:{POSTGRES_PORT}/{DATABASE}?sslmode=require")


def cluster_spec(instances: int, storage_size: str, storage_class: Optional[pulumi.Input[str]],
                 owner_secret: pulumi.Input[str]) -> dict:
    storage: dict = {"size": storage_size}
    if storage_class is not None:
        storage["storageClass"] = storage_class
    return {
        "instances": instances,
        "imageName": POSTGRES_IMAGE,
        "storage": storage,
        "resources": RESOURCES,
        # One instance cannot stay up through a drain anyway; its PodDisruptionBudget would only
        # block the drain.
        "enablePDB": instances > 1,
        "bootstrap": {"initdb": {"database": DATABASE, "owner": OWNER, "secret": {"name": owner_secret}}},
    }


def policy_specs(args: KeysDatabaseArgs) -> dict[str, dict]:
    """Name -> NetworkPolicy spec for the database namespace; each selects every pod there."""
    every_pod: dict = {}
    here = {"podSelector": {}}
    tcp = lambda *ports: [{"protocol": "TCP", "port": p} for p in ports]  # noqa: E731
    return {
        "default-deny": {"podSelector": every_pod, "policyTypes": ["Ingress", "Egress"]},
        "allow-front-door": {"podSelector": every_pod, "policyTypes": ["Ingress"], "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: args["client_namespace"]}}}],
            "ports": tcp(POSTGRES_PORT),
        }]},
        "allow-operator": {"podSelector": every_pod, "policyTypes": ["Ingress"], "ingress": [{
            "from": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: args["operator_namespace"]}},
                      "podSelector": {"matchLabels": OPERATOR_POD_LABELS}}],
            "ports": tcp(STATUS_PORT),
        }]},
        # Standbys clone and stream from the primary; an instance's liveness check reaches the
        # others' status port to tell whether it is cut off.
        "allow-instances": {"podSelector": every_pod, "policyTypes": ["Ingress", "Egress"],
                            "ingress": [{"from": [here], "ports": tcp(POSTGRES_PORT, STATUS_PORT)}],
                            "egress": [{"to": [here], "ports": tcp(POSTGRES_PORT, STATUS_PORT)}]},
        "allow-dns": {"podSelector": every_pod, "policyTypes": ["Egress"], "egress": [{
            "to": [{"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }]},
        # Never the internet: only the private ranges and the cluster's own (what HTTPS egress
        # elsewhere leaves out), where the API server answers.
        "allow-api-server": {"podSelector": every_pod, "policyTypes": ["Egress"], "egress": [{
            "to": [{"ipBlock": {"cidr": c}} for c in outside_ranges(args["cluster_cidrs"])],
            "ports": tcp(*API_SERVER_PORTS),
        }]},
    }


class KeysDatabase(pulumi.ComponentResource):
    connection: DatabaseConnection

    def __init__(self, name: str, args: KeysDatabaseArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:KeysDatabase", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=args["provider"])
        ns = args["namespace"]

        # The chart creates the CRDs (Cluster, ...) and the operator's admission webhooks.
        operator = k8s.helm.v3.Release(
            f"{name}-operator",
            name=CNPG_RELEASE,
            **release_source(CNPG_CHART, args["chart_version"], CNPG_REPO),
            namespace=args["operator_namespace"],
            create_namespace=True,
            values={"crds": {"create": True}},
            opts=child,
        )
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            # Outside the mesh: PostgreSQL speaks TLS itself, and the operator must reach the
            # status port of every instance directly.
            metadata={"name": ns, "labels": {"istio-injection": "disabled", **pod_security_labels("restricted")}},
            opts=child,
        )
        ns_name = namespace.metadata.name
        if args["network_policies"]:
            for policy, spec in policy_specs(args).items():
                k8s.networking.v1.NetworkPolicy(
                    f"{name}-{policy}", metadata={"name": policy, "namespace": ns_name}, spec=spec, opts=child)

        # Letters and digits only: it goes into a URL unescaped.
        password = random.RandomPassword(f"{name}-owner-password", length=32, special=False,
                                         opts=pulumi.ResourceOptions(parent=self))
        owner = k8s.core.v1.Secret(
            f"{name}-owner",
            metadata={"name": f"{CLUSTER_NAME}-owner", "namespace": ns_name},
            type="kubernetes.io/basic-auth",
            string_data={"username": OWNER, "password": password.result},
            opts=child,
        )
        cluster = k8s.apiextensions.CustomResource(
            f"{name}-cluster",
            api_version="postgresql.cnpg.io/v1",
            kind="Cluster",
            # `up` waits until the operator reports the database ready.
            metadata={"name": CLUSTER_NAME, "namespace": ns_name, "annotations": {"pulumi.com/waitFor": "condition=Ready"}},
            spec=cluster_spec(args["instances"], args["storage_size"], args["storage_class"], owner.metadata.name),
            # The CRD and the operator's webhook come with the release.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[operator])),
        )
        url = k8s.core.v1.Secret(
            f"{name}-url",
            metadata={"name": URL_SECRET, "namespace": args["client_namespace"]},
            string_data={URL_KEY: pulumi.Output.secret(database_url(password.result, ns))},
            opts=child,
        )
        self.connection = DatabaseConnection(
            secret_name=url.metadata.name, secret_key=URL_KEY, namespace=ns,
            host=f"{RW_SERVICE}.{ns}.svc.cluster.local", port=POSTGRES_PORT, ready=[url, cluster])
        self.register_outputs({"namespace": ns, "host": self.connection.host})
