"""Platform services: mesh, UI, front door, router, GitOps, security and gateway."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional
from urllib.parse import urlparse

from pydantic import (
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
    chart_version: ChartVersion = "1.30.3"


class UiConfig(_Model):
    """Open WebUI, delivered by Argo CD."""

    enabled: bool = True
    namespace: DnsLabel = "open-webui"
    chart_version: ChartVersion = "16.0.0"
    storage_size: Quantity = "2Gi"
    # The admin account created at first start (password: the `uiAdminPassword` secret, or
    # generated and shown by `pulumi stack output uiAdminPassword --show-secrets`).
    admin_email: str = Field("admin@llm-platform.local", pattern=r"^[^@\s]+@[^@\s]+$")
    # Whether visitors may create accounts; closed by default, the admin adds users.
    signup: bool = False


class ProviderModel(_Model):
    """A model of a hosted OpenAI-compatible provider, offered through the front door."""

    # The name clients send as `model`.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
    # LiteLLM's "<provider>/<model>", e.g. "openai/gpt-4o-mini" or "anthropic/claude-sonnet-4-5".
    model: str = Field(pattern=r"^[a-z0-9_]+/\S+$")
    api_base: Optional[str] = Field(None, pattern=r"^https://\S+$")

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
    cpu: Quantity = "500m"
    memory: Quantity = "1Gi"
    cpu_limit: Quantity = "2"
    memory_limit: Quantity = "2Gi"


class FrontDoorConfig(_Model):
    """LiteLLM's proxy in front of every model: one base URL, routing by `model`."""

    namespace: DnsLabel = "front-door"
    # None: the release the tests run (components/front_door.py).
    image: Optional[Image] = None
    # None: as many as the ingress gateway keeps (1 on a laptop, 2 on the clouds).
    replicas: Optional[int] = Field(None, ge=1)
    # Longest a request (a long streamed generation included) may take.
    timeout_seconds: int = Field(900, ge=30, le=3600)
    # Prometheus metrics at /metrics.
    metrics: bool = True
    resources: FrontDoorResources = FrontDoorResources()
    # Hosted models; each needs its key in the `providerKeys` secret, under its name.
    providers: list[ProviderModel] = []
    # Per-team keys with budgets and rate limits, backed by PostgreSQL (off by default).
    virtual_keys: VirtualKeysConfig = VirtualKeysConfig()

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
    # Models held in memory at once; the least recently used beyond it is unloaded.
    models_max: int = Field(2, ge=1)
    resources: Resources = Resources()
    # None: the stack's llama.cpp image (its build must have router mode).
    image: Optional[Image] = None


class AppConfig(_Model):
    """Any further Helm chart Argo CD should deliver."""

    name: DnsLabel
    namespace: DnsLabel
    repo_url: str = Field(pattern=r"^(https|oci)://\S+$")
    chart: str = Field(min_length=1)
    target_revision: ChartVersion
    values: dict[str, Any] = {}


class GitOpsConfig(_Model):
    chart_version: ChartVersion = "10.1.1"


class SecurityConfig(_Model):
    """Secure by default; each switch is an opt-out for a laptop that needs it."""

    # `/v1` requires an API key (Authorization: Bearer ...).
    api_auth: bool = True
    # STRICT mutual TLS in the model and UI namespaces, and only the ingress gateway and the UI
    # may call the model servers.
    mtls: bool = True
    # Default-deny NetworkPolicies in the model namespace, with the few flows it needs allowed.
    network_policies: bool = True
    # Model servers run under the restricted Pod Security profile, enforced on their namespace.
    restricted_pods: bool = True
    # Extra groups for the model servers, e.g. the node's render group so a non-root server can
    # open /dev/dri.
    supplemental_groups: list[Annotated[int, Field(ge=1)]] = []

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
    acme_email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$")
    acme_server: str = Field("https://acme-v02.api.letsencrypt.org/directory", pattern=r"^https://\S+$")


class GatewayConfig(_Model):
    # None: answer on any host name (the ingress address is used in URLs).
    host: Optional[str] = Field(None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    # TLS from a certificate Secret in the istio-ingress namespace...
    tls_secret: Optional[DnsLabel] = None
    # ...or issued by cert-manager.
    cert_manager: Optional[CertManagerConfig] = None
    # Where the clouds' (eks, gke) load balancer answers: "internet", or "internal" (inside the
    # cluster's network only). None: the internet once TLS is on, else internal, so the API
    # keys and the UI's passwords never cross the internet in clear.
    load_balancer: Optional[Literal["internal", "internet"]] = None

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
