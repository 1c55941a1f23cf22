"""Platform services: mesh, UI, front door, router, GitOps, security and gateway."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlparse

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from components.config.base import ChartVersion, DnsLabel, Image, Quantity, _Model
from components.config.models import Resources
from components.config.virtual_keys import VirtualKeysConfig
from components.core.providers import PROVIDER_HOSTS, provider_host

# --- platform services ---------------------------------------------------------------------


class MeshConfig(_Model):
    """Istio: base, CNI, istiod and the ingress gateway."""

    chart_version: ChartVersion = "1.30.3"
    """The Istio charts' version."""
    gateway_api_crds: bool = True
    """Whether the stack installs the Gateway API's CRDs (v1.6.1, standard channel) and the
    Inference Extension's (v1.5.0), which the gateway's routes and the inference pools are made
    of. false: the cluster has them already, at those releases or later (a managed Gateway API,
    another controller's install); the stack then leaves them alone. Installed ones stay on
    `destroy`: removing a CRD would delete every object of its kind in the cluster."""


class UiConfig(_Model):
    """Open WebUI, delivered by Argo CD."""

    enabled: bool = True
    """Whether the chat UI is installed (served at `/`)."""
    namespace: DnsLabel = "open-webui"
    """The UI's namespace."""
    chart_version: ChartVersion = "16.0.0"
    """The Open WebUI chart's version."""
    storage_size: Quantity = "2Gi"
    """The UI's data volume."""
    admin_email: str = Field("admin@llm-platform.local", pattern=r"^[^@\s]+@[^@\s]+$")
    """The admin account created at first start (password: the `uiAdminPassword` secret, or
    generated and shown by `pulumi stack output uiAdminPassword --show-secrets`)."""
    signup: bool = False
    """Whether visitors may create accounts; closed by default, the admin adds users."""


class ProviderModel(_Model):
    """A model of a hosted OpenAI-compatible provider, offered through the front door."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    """The name clients send as `model`; its key is `providerKeys.<name>`, and no model of the
    stack may have it."""
    model: str = Field(pattern=r"^[a-z0-9_]+/\S+$")
    """LiteLLM's `<provider>/<model>`, e.g. `openai/gpt-4o-mini` or `anthropic/claude-sonnet-4-5`."""
    api_base: Optional[str] = Field(None, pattern=r"^https://\S+$")
    """The provider's API, https on port 443 (the only port the front door's egress opens);
    required for providers the program does not know the host of (it knows `openai`,
    `anthropic`, `mistral`, `groq` and `gemini`)."""

    @field_validator("api_base")
    @classmethod
    def _on_443(cls, value: Optional[str]) -> Optional[str]:
        # The front door's egress (ServiceEntry, NetworkPolicy) opens 443 alone: another port
        # would be accepted here and then silently blocked.
        try:
            port = urlparse(value).port if value else None
        except ValueError:
            port = -1
        if port not in (None, 443):
            raise ValueError(f"expected an https URL on port 443 (the only port the front door may reach), "
                             f"got {value!r}")
        return value


class FrontDoorResources(Resources):
    """CPU and memory of each front door pod: requests and limits."""

    cpu: Quantity = "500m"
    """CPU request."""
    memory: Quantity = "1Gi"
    """Memory request."""
    cpu_limit: Quantity = "2"
    """CPU limit."""
    memory_limit: Quantity = "2Gi"
    """Memory limit."""


class FrontDoorConfig(_Model):
    """LiteLLM's proxy in front of every model: one base URL, routing by `model`."""

    namespace: DnsLabel = "front-door"
    """The front door's namespace."""
    image: Optional[Image] = None
    """None: the pinned LiteLLM release the tests run (components/edge/front_door.py). An image
    without the `litellm_enterprise` package fails at start."""
    replicas: Optional[int] = Field(None, ge=1)
    """None: as many as the ingress gateway keeps (1 on a laptop, 2 on the clouds). Rate limits
    are counted per replica (see docs/front-door.md)."""
    timeout_seconds: int = Field(900, ge=30, le=3600)
    """Longest a request (a long streamed generation included) may take; a stopping replica lets
    requests in flight run this long."""
    metrics: bool = True
    """Prometheus metrics at `/metrics/`; scale to zero needs them."""
    resources: FrontDoorResources = FrontDoorResources()
    """CPU and memory of each front door pod."""
    providers: list[ProviderModel] = []
    """Hosted models through the same door; each needs its key in the `providerKeys` secret,
    under its name, and `security.apiAuth` (an open API would spend the providers' keys for
    anyone)."""
    virtual_keys: VirtualKeysConfig = VirtualKeysConfig()
    """Per-team keys with budgets and rate limits, backed by PostgreSQL (off by default); rate
    limits and revocations hold per front door replica (see docs/front-door.md)."""

    @model_validator(mode="after")
    def _providers_have_a_host(self) -> "FrontDoorConfig":
        if not self.providers:
            return self
        for i, p in enumerate(self.providers):
            if provider_host(p) is None:
                raise ValueError(f"providers[{i}].apiBase: required for {p.model.split('/')[0]!r} models "
                                 f"(known without it: {', '.join(PROVIDER_HOSTS)})")
        return self


class LlamaRouterConfig(_Model):
    """llama.cpp's router mode: one llama-server serves every GGUF model, loading on demand."""

    enabled: bool = False
    """One llama-server pod holds the accelerator and serves every model of `models` (GGUF,
    accelerator `vulkan` or `none`), instead of one pod per model; not with autoscaled models."""
    models_max: int = Field(2, ge=1)
    """Models held in memory at once; the least recently used beyond it is unloaded."""
    resources: Resources = Resources()
    """CPU and memory of the router's pod: size them for `modelsMax` models at once."""
    image: Optional[Image] = None
    """None: the stack's llama.cpp image (its build must have router mode)."""


class AppConfig(_Model):
    """Any further Helm chart Argo CD should deliver."""

    name: DnsLabel
    """The Argo CD Application's name."""
    namespace: DnsLabel
    """The namespace the chart is installed in."""
    repo_url: str = Field(pattern=r"^(https|oci)://\S+$")
    """The chart repository."""
    chart: str = Field(min_length=1)
    """The chart's name in that repository."""
    target_revision: ChartVersion
    """The chart's exact version."""
    values: dict[str, Any] = {}
    """Helm values for the chart."""


class SecretKeyRef(_Model):
    """A key of a Secret you create in the operator's namespace (never a value in the stack file)."""

    name: DnsLabel
    """The Secret's name."""
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$")
    """The key within it."""


def _remote_backend(value: str) -> str:
    """a state backend the cluster can reach: `s3://`, `gs://`, `azblob://` or `https://` (Pulumi
    Cloud), not `file://`"""
    if not re.match(r"^(s3|gs|azblob|https)://\S+$", value):
        raise ValueError(f"expected a backend the cluster can reach (s3://, gs://, azblob:// or https://), got "
                         f"{value!r}; a file:// backend lives on the machine that ran `up`")
    return value


class PulumiOperatorConfig(_Model):
    """The Pulumi Kubernetes Operator, to have the cluster pull: it runs this program from the
    repository, on this stack, whenever the branch moves (instead of, or beside, CI's `up`)."""

    enabled: bool = False
    """Install the operator and a `Stack` object for this stack."""
    chart_version: ChartVersion = "2.9.0"
    """The pulumi-kubernetes-operator chart's version."""
    repository: Optional[str] = Field(None, pattern=r"^(https://|ssh://|git@)\S+$")
    """The Git repository of this program (`projectRepo`); required when enabled."""
    branch: str = Field("main", pattern=r"^[\w./-]+$")
    """The branch to deploy."""
    repo_dir: Optional[str] = Field(None, pattern=r"^[\w./-]+$")
    """The folder of `Pulumi.yaml` in the repository, when not its root."""
    backend: Optional[Annotated[str, AfterValidator(_remote_backend)]] = None
    """The stack's state backend, the one CI's `up` uses (`s3://...`, `gs://...`,
    `https://api.pulumi.com`); required when enabled."""
    passphrase: Optional[SecretKeyRef] = None
    """Where the stack's secrets passphrase is (`PULUMI_CONFIG_PASSPHRASE`), for stacks encrypted by
    passphrase; None: the stack's own secrets provider (a KMS the workspace's identity may use)."""
    access_token: Optional[SecretKeyRef] = None
    """Where a Pulumi Cloud access token is (`PULUMI_ACCESS_TOKEN`), for an `https://` backend."""
    git_auth_secret: Optional[DnsLabel] = None
    """A Secret with the repository's credentials (the operator's `gitAuthSecret` shapes), for a
    private repository."""
    workspace_role_arn: Optional[str] = Field(None, pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$")
    """eks: the IAM role the workspace runs the program as, given to its service account by EKS Pod
    Identity; list it in `cluster.adminRoles` too."""
    workspace_annotations: dict[str, str] = {}
    """Annotations of the workspace's service account, e.g. `iam.gke.io/gcp-service-account` on gke
    for the cloud access the program needs (on eks: `workspaceRoleArn`)."""
    resync_seconds: int = Field(300, ge=60)
    """How often the operator looks at the branch for a new commit."""

    @model_validator(mode="after")
    def _complete(self) -> "PulumiOperatorConfig":
        if self.enabled and not self.repository:
            raise ValueError("repository: required with enabled: true (the Git URL of this program)")
        if self.enabled and not self.backend:
            raise ValueError("backend: required with enabled: true (the state backend CI's `up` uses)")
        if self.access_token and self.backend and not self.backend.startswith("https://"):
            raise ValueError("accessToken: only for an https:// (Pulumi Cloud) backend")
        return self


class GitOpsConfig(_Model):
    """Argo CD, which delivers the UI and `apps`; optionally the Pulumi Kubernetes Operator."""

    chart_version: ChartVersion = "10.1.1"
    """The Argo CD chart's version."""
    pulumi_operator: PulumiOperatorConfig = PulumiOperatorConfig()
    """Off by default: the cluster runs this program itself from Git (docs/teams.md, "Pull
    instead of push")."""


class SecurityConfig(_Model):
    """Secure by default; each switch is an opt-out for a laptop that needs it."""

    api_auth: bool = True
    """`/v1` requires an API key (`Authorization: Bearer ...`)."""
    mtls: bool = True
    """STRICT mutual TLS in the model, front-door and UI namespaces, with AuthorizationPolicies
    that let only the front door and the ingress gateway call the model servers and only the
    ingress gateway and the UI call the front door. Off: PERMISSIVE, without those policies."""
    network_policies: bool = True
    """Default-deny NetworkPolicies in the model namespace, with the few flows it needs allowed."""
    restricted_pods: bool = True
    """Model servers run under the restricted Pod Security profile, enforced on their namespace."""
    supplemental_groups: list[Annotated[int, Field(ge=1)]] = []
    """Extra groups for the model servers, e.g. the node's render group so a non-root server can
    open `/dev/dri`."""

    @model_validator(mode="before")
    @classmethod
    def _no_removed_keys(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and "metricsFrom" in raw:
            raise ValueError(REMOVED_METRICS_FROM)
        return raw


REMOVED_METRICS_FROM = (
    "metricsFrom: no longer a setting; under STRICT mTLS a namespace rule cannot admit a scraper, "
    "so the stack's own Prometheus (monitoring.enabled) scrapes with its mesh identity: remove the key"
)


class CertManagerConfig(_Model):
    """Certificates from an ACME issuer (Let's Encrypt by default) through cert-manager."""

    chart_version: ChartVersion = "v1.21.1"
    """The cert-manager chart's version."""
    acme_email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
    """The e-mail address the ACME account is registered with."""
    acme_server: str = Field("https://acme-v02.api.letsencrypt.org/directory", pattern=r"^https://\S+$")
    """The ACME directory (Let's Encrypt's production one by default)."""


class GatewayConfig(_Model):
    """The Gateway API Gateway on the mesh's ingress and its routes: `/v1` to every model, `/` to the UI."""

    host: Optional[str] = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    """The ingress's host name; required with TLS (the certificate names it). None: answer on any
    host name (the ingress address is used in URLs)."""
    tls_secret: Optional[DnsLabel] = None
    """TLS from a certificate Secret in the `istio-ingress` namespace..."""
    cert_manager: Optional[CertManagerConfig] = None
    """...or issued by cert-manager v1.21.1 and Let's Encrypt (not both). With TLS the gateway
    answers on HTTPS only (port 80 redirects)."""
    load_balancer: Optional[Literal["internal", "internet"]] = None
    """Where the clouds' (eks, gke) load balancer answers: `internet`, or `internal` (inside the
    cluster's network only); refused on other clusters. None: the internet once TLS is on, else
    internal, so the API keys and the UI's passwords never cross the internet in clear.
    `internet` needs TLS, and `internal` takes `tlsSecret`, not `certManager` (whose HTTP-01
    challenge must reach the gateway from the internet). See docs/cloud-stacks.md."""

    @model_validator(mode="after")
    def _tls_needs_a_host(self) -> "GatewayConfig":
        if self.tls_secret and self.cert_manager:
            raise ValueError("certManager: expected either tlsSecret or certManager, not both")
        if (self.tls_secret or self.cert_manager) and not self.host:
            raise ValueError("host: required when TLS is on (the certificate names it)")
        if self.load_balancer == "internet" and not self.tls:
            raise ValueError("loadBalancer: 'internet' needs TLS (host with tlsSecret or certManager); in plain "
                             "HTTP the API keys and the UI's passwords would cross the internet in clear")
        if self.load_balancer == "internal" and self.cert_manager:
            raise ValueError("certManager: expected tlsSecret with an internal load balancer (the ACME HTTP-01 "
                             "challenge must reach the gateway from the internet)")
        return self

    @property
    def tls(self) -> bool:
        return bool(self.tls_secret or self.cert_manager)

    @property
    def internet_facing(self) -> bool:
        """Whether a cloud load balancer in front of the ingress faces the internet."""
        return self.load_balancer == "internet" if self.load_balancer else self.tls
