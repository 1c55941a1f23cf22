"""KeysDatabase: PostgreSQL for the front door's virtual keys (budgets, rate limits, spend).
The CloudNativePG operator from its Helm chart runs one `Cluster` in a namespace of its own,
outside the mesh, that only the front door (and the operator) may reach. The owner's password is
generated and lives only in Secrets; the front door gets its connection URL from one, and checks
the server's certificate against the database's CA, which the program makes and keeps in state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random
import pulumi_tls as tls

from components.core.chart_source import release_source
from components.core.pod_security import pod_security_labels
from components.core.trust import allow_dns, default_deny, namespace_peer, outside_ranges, tcp

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
# The server's CA is the program's own, not the operator's: CloudNativePG's default CA
# (`<cluster>-ca`) lives in the database's namespace, where the front door cannot mount it, and
# is renewed every 90 days, so a copy would go stale. Given `serverCASecret` with `ca.crt` and
# `ca.key` (an "EC PRIVATE KEY", the only kind it parses), the operator signs the server
# certificate with it and renews that every 90 days itself (api/v1 CertificatesConfiguration).
SERVER_CA_SECRET = f"{CLUSTER_NAME}-server-ca"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
# Ten years; an `up` in the last one renews it (same key, so served certificates still chain).
CA_VALIDITY_HOURS = 10 * 365 * 24
CA_EARLY_RENEWAL_HOURS = 365 * 24
# ...and its certificate alone, in the front door's namespace, mounted where the URL names it.
CLIENT_CA_SECRET = "litellm-database-ca"
CLIENT_CA_DIR = "/etc/litellm-database-ca"
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
    # The Secret (in the front door's namespace) with the server's CA under CA_CERT, to mount at
    # CLIENT_CA_DIR: the URL verifies the server against it.
    ca_secret_name: pulumi.Output[str]
    # Applied before the front door starts with the URL: the Secret, and the Cluster (which
    # `up` waits for until it is Ready).
    ready: Sequence[pulumi.Resource]


class KeysDatabaseArgs(TypedDict):
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


def server_host(namespace: str) -> str:
    """The name the front door connects to and checks in the server's certificate: the operator's
    read-write Service, as its certificate names it (`<service>.<namespace>.svc` is one of the
    names CloudNativePG always puts there, whatever the cluster's DNS domain)."""
    return f"{RW_SERVICE}.{namespace}.svc"


def database_url(password: pulumi.Input[str], namespace: str) -> pulumi.Output[str]:
    # PostgreSQL's TLS carries the password; libpq's `verify-full` checks the chain against the
    # database's CA and the host name. LiteLLM (1.108.7, db_url_settings.translate_libpq_ssl_params)
    # rewrites it for Prisma, which knows neither `verify-full` (read as `prefer`!) nor
    # `sslrootcert`: `sslmode=require&sslcert=<CA>&sslaccept=strict`.
    return pulumi.Output.concat(f"postgresql://{OWNER}:", password,
                                f"@{server_host(namespace)}:{POSTGRES_PORT}/{DATABASE}"
                                f"?sslmode=verify-full&sslrootcert={CLIENT_CA_DIR}/{CA_CERT}")


def cluster_spec(instances: int, storage_size: str, storage_class: Optional[pulumi.Input[str]],
                 owner_secret: pulumi.Input[str], server_ca_secret: pulumi.Input[str], namespace: str) -> dict:
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
        "certificates": {
            "serverCASecret": server_ca_secret,
            # The name the front door checks, listed so the certificate carries it whatever the
            # operator's defaults. A changed list also makes the operator re-issue a certificate it
            # signed before with its own CA (certs.RenewLeafCertificate), so a stack that had one
            # moves to this CA on its next `up`.
            "serverAltDNSNames": [server_host(namespace)],
        },
    }


def policy_specs(args: KeysDatabaseArgs) -> dict[str, dict]:
    """Name -> NetworkPolicy spec for the database namespace; each selects every pod there."""
    every_pod: dict = {}
    here: dict[str, dict] = {"podSelector": {}}
    return {
        "default-deny": default_deny(),
        "allow-front-door": {"podSelector": every_pod, "policyTypes": ["Ingress"], "ingress": [{
            "from": [namespace_peer(args["client_namespace"])],
            "ports": tcp(POSTGRES_PORT),
        }]},
        "allow-operator": {"podSelector": every_pod, "policyTypes": ["Ingress"], "ingress": [{
            "from": [namespace_peer(args["operator_namespace"], OPERATOR_POD_LABELS)],
            "ports": tcp(STATUS_PORT),
        }]},
        # Standbys clone and stream from the primary; an instance's liveness check reaches the
        # others' status port to tell whether it is cut off.
        "allow-instances": {"podSelector": every_pod, "policyTypes": ["Ingress", "Egress"],
                            "ingress": [{"from": [here], "ports": tcp(POSTGRES_PORT, STATUS_PORT)}],
                            "egress": [{"to": [here], "ports": tcp(POSTGRES_PORT, STATUS_PORT)}]},
        "allow-dns": allow_dns(),
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
        child = pulumi.ResourceOptions(parent=self)
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
        # The server's CA (see SERVER_CA_SECRET): kept in state, as a secret.
        ca_key = tls.PrivateKey(f"{name}-server-ca-key", algorithm="ECDSA", ecdsa_curve="P256",
                                opts=pulumi.ResourceOptions(parent=self))
        ca_cert = tls.SelfSignedCert(
            f"{name}-server-ca",
            private_key_pem=ca_key.private_key_pem,
            is_ca_certificate=True,
            subject={"common_name": f"{CLUSTER_NAME} server CA", "organization": "llm-platform"},
            validity_period_hours=CA_VALIDITY_HOURS,
            early_renewal_hours=CA_EARLY_RENEWAL_HOURS,
            allowed_uses=["cert_signing", "crl_signing"],
            opts=pulumi.ResourceOptions(parent=self),
        )
        ca_key_pem: pulumi.Output[str] = pulumi.Output.secret(ca_key.private_key_pem)
        server_ca = k8s.core.v1.Secret(
            f"{name}-server-ca",
            metadata={"name": SERVER_CA_SECRET, "namespace": ns_name},
            string_data={CA_CERT: ca_cert.cert_pem, CA_KEY: ca_key_pem},
            opts=child,
        )
        cluster = k8s.apiextensions.CustomResource(
            f"{name}-cluster",
            api_version="postgresql.cnpg.io/v1",
            kind="Cluster",
            # `up` waits until the operator reports the database ready.
            metadata={"name": CLUSTER_NAME, "namespace": ns_name, "annotations": {"pulumi.com/waitFor": "condition=Ready"}},
            spec=cluster_spec(args["instances"], args["storage_size"], args["storage_class"], owner.metadata.name,
                              server_ca.metadata.name, ns),
            # The CRD and the operator's webhook come with the release.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[operator])),
        )
        url_secret: pulumi.Output[str] = pulumi.Output.secret(database_url(password.result, ns))
        url = k8s.core.v1.Secret(
            f"{name}-url",
            metadata={"name": URL_SECRET, "namespace": args["client_namespace"]},
            string_data={URL_KEY: url_secret},
            opts=child,
        )
        client_ca = k8s.core.v1.Secret(
            f"{name}-client-ca",
            metadata={"name": CLIENT_CA_SECRET, "namespace": args["client_namespace"]},
            string_data={CA_CERT: ca_cert.cert_pem},
            opts=child,
        )
        self.connection = DatabaseConnection(
            secret_name=url.metadata.name, secret_key=URL_KEY, namespace=ns,
            host=f"{RW_SERVICE}.{ns}.svc.cluster.local", port=POSTGRES_PORT,
            ca_secret_name=client_ca.metadata.name, ready=[url, client_ca, cluster])
        self.register_outputs({"namespace": ns, "host": self.connection.host})
