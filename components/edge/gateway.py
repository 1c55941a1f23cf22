"""Gateway: the one way in. Istio Gateway + VirtualService on the mesh's ingress:
`/v1` -> the front door (every model, by name), `/grafana` -> Grafana, `/` -> the chat UI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.config import CertManagerConfig
from components.core.chart_source import release_source
from components.edge.front_door import INTERNAL_RESPONSE_HEADERS
from components.platform.mesh import HTTP_PORT, HTTPS_PORT, INGRESS_CLASS, INGRESS_CONTROLLER, Mesh
from components.platform.monitoring import GRAFANA_PATH

CERT_MANAGER_REPO = "https://charts.jetstack.io"
CERT_SECRET = "llm-gateway-tls"
ACME_ISSUER = "llm-platform-acme"
GATEWAY_NAME = "llm-gateway"
# The routes' names (Envoy's too); those that serve pages, not the API, are never asked which
# model a body names.
API_ROUTE, GRAFANA_ROUTE, UI_ROUTE, REDIRECT_ROUTE = "v1", "grafana", "ui", "to-https"
PAGE_ROUTES = (GRAFANA_ROUTE, UI_ROUTE, REDIRECT_ROUTE)


@dataclass(frozen=True)
class Backend:
    host: pulumi.Input[str]
    port: int


class GatewayArgs(TypedDict):
    mesh: Mesh
    # The OpenAI API of every model: the front door.
    api: Backend
    ui: Optional[Backend]
    # Grafana, served under GRAFANA_PATH (it is configured for that sub-path).
    grafana: Optional[Backend]
    host: Optional[str]
    tls_secret: Optional[str]
    # Issue the certificate with cert-manager (ACME) instead of naming a Secret.
    cert_manager: Optional[CertManagerConfig]
    # Where the ingress is reached from outside, "ip:port" or a host name.
    address: pulumi.Input[str]
    # API routes matched before `/v1` -> `api` (model_routing.model_routes), and what they wait for.
    model_routes: NotRequired[Sequence[dict]]
    routes_ready: NotRequired[Sequence[pulumi.Resource]]


def _route(name: str, prefix: str, backend: Backend) -> dict:
    route = {
        "name": name,
        "match": [{"uri": {"prefix": prefix}}],
        "route": [{"destination": {"host": backend.host, "port": {"number": backend.port}}}],
        # What the front door would tell a caller about the servers behind it.
        "headers": {"response": {"remove": list(INTERNAL_RESPONSE_HEADERS)}},
    }
    return route


class Gateway(pulumi.ComponentResource):
    url: pulumi.Output[str]
    api_base_url: pulumi.Output[str]
    ui_url: pulumi.Output[str]
    grafana_url: Optional[pulumi.Output[str]]

    def __init__(self, name: str, args: GatewayArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:Gateway", name, None, opts)
        mesh = args["mesh"]
        host, tls_secret = args["host"], args["tls_secret"]
        if args["cert_manager"]:
            assert host is not None  # the config asks for a host with certManager
            tls_secret = self._issue_certificate(name, host, args["cert_manager"], mesh)
        hosts = [host] if host else ["*"]
        http = {"number": HTTP_PORT, "name": "http", "protocol": "HTTP"}
        servers = [{"port": http, "hosts": hosts}]
        if tls_secret:
            servers.append({"port": {"number": HTTPS_PORT, "name": "https", "protocol": "HTTPS"}, "hosts": hosts,
                            "tls": {"mode": "SIMPLE", "credentialName": tls_secret}})

        # Istio objects need the CRDs from `base` and istiod's validating webhook.
        opts_cr = pulumi.ResourceOptions(parent=self, depends_on=[mesh.base, mesh.istiod])
        self.gateway = k8s.apiextensions.CustomResource(
            f"{name}-gateway",
            api_version="networking.istio.io/v1",
            kind="Gateway",
            metadata={"name": GATEWAY_NAME, "namespace": mesh.ingress_namespace},
            spec={"selector": dict(mesh.ingress_selector), "servers": servers},
            opts=opts_cr,
        )
        gateways = [f"{mesh.ingress_namespace}/{GATEWAY_NAME}"]

        routes = [*args.get("model_routes", ()), _route(API_ROUTE, "/v1", args["api"])]
        if args["grafana"]:
            routes.append(_route(GRAFANA_ROUTE, GRAFANA_PATH, args["grafana"]))
        if args["ui"]:
            routes.append(_route(UI_ROUTE, "/", args["ui"]))
        if tls_secret:
            # With TLS the platform answers only on HTTPS; port 80 only redirects (below).
            routes = [{**route, "match": [{**m, "port": HTTPS_PORT} for m in route["match"]]} for route in routes]
        self.virtual_service = k8s.apiextensions.CustomResource(
            f"{name}-routes",
            api_version="networking.istio.io/v1",
            kind="VirtualService",
            metadata={"name": "llm-routes", "namespace": mesh.ingress_namespace},
            spec={"hosts": hosts, "gateways": gateways, "http": routes},
            opts=pulumi.ResourceOptions.merge(opts_cr, pulumi.ResourceOptions(
                depends_on=list(args.get("routes_ready", ())))),
        )
        if tls_secret:
            # Plain HTTP is sent to HTTPS by a catch-all route rather than the server's
            # `httpsRedirect`, which would also redirect the ACME HTTP-01 challenge (served on
            # port 80 before any certificate exists). Istio orders catch-all routes after the
            # challenge's exact path on the same host, so the challenge is answered.
            self.redirect = k8s.apiextensions.CustomResource(
                f"{name}-https-redirect",
                api_version="networking.istio.io/v1",
                kind="VirtualService",
                metadata={"name": "llm-https-redirect", "namespace": mesh.ingress_namespace},
                spec={"hosts": hosts, "gateways": gateways, "http": [{
                    "name": REDIRECT_ROUTE,
                    "match": [{"port": HTTP_PORT}],
                    "redirect": {"scheme": "https", "redirectCode": 301},
                }]},
                opts=opts_cr,
            )

        scheme = "https" if tls_secret else "http"
        authority = pulumi.Output.from_input(host or args["address"])
        self.url = authority.apply(lambda a: f"{scheme}://{a}")
        self.api_base_url = self.url.apply(lambda u: f"{u}/v1")
        self.ui_url = self.url.apply(lambda u: f"{u}/")
        self.grafana_url = self.url.apply(lambda u: f"{u}{GRAFANA_PATH}/") if args["grafana"] else None
        self.register_outputs({"url": self.url, "apiBaseUrl": self.api_base_url, "uiUrl": self.ui_url,
                               "grafanaUrl": self.grafana_url})

    def _issue_certificate(self, name: str, host: str, cfg: CertManagerConfig, mesh: Mesh) -> str:
        """cert-manager with an ACME ClusterIssuer (HTTP-01 answered through the Istio ingress)
        and a Certificate for `host`; returns the Secret the gateway serves it from."""
        release = k8s.helm.v3.Release(
            f"{name}-cert-manager",
            name="cert-manager",
            **release_source("cert-manager", cfg.chart_version, CERT_MANAGER_REPO),
            namespace="cert-manager",
            create_namespace=True,
            values={"crds": {"enabled": True}},
            opts=pulumi.ResourceOptions(parent=self),
        )
        # The solver's challenge Ingress names this class; istiod (ingressControllerMode STRICT)
        # serves an Ingress only when its IngressClass names Istio's controller.
        ingress_class = k8s.networking.v1.IngressClass(
            f"{name}-ingress-class",
            metadata={"name": INGRESS_CLASS},
            spec={"controller": INGRESS_CONTROLLER},
            opts=pulumi.ResourceOptions(parent=self),
        )
        # The CRDs come with the release.
        cr_opts = pulumi.ResourceOptions(parent=self, depends_on=[release, ingress_class])
        issuer = k8s.apiextensions.CustomResource(
            f"{name}-acme-issuer",
            api_version="cert-manager.io/v1",
            kind="ClusterIssuer",
            metadata={"name": ACME_ISSUER},
            spec={"acme": {
                "server": cfg.acme_server,
                "email": cfg.acme_email,
                "privateKeySecretRef": {"name": "llm-platform-acme-account"},
                "solvers": [{"http01": {"ingress": {"ingressClassName": INGRESS_CLASS}}}],
            }},
            opts=cr_opts,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-certificate",
            api_version="cert-manager.io/v1",
            kind="Certificate",
            metadata={"name": "llm-gateway", "namespace": mesh.ingress_namespace},
            spec={
                "secretName": CERT_SECRET,
                "dnsNames": [host],
                "issuerRef": {"name": ACME_ISSUER, "kind": "ClusterIssuer"},
            },
            opts=pulumi.ResourceOptions.merge(cr_opts, pulumi.ResourceOptions(depends_on=[issuer])),
        )
        # Istio serves the Secret as soon as cert-manager writes it: nothing waits for it.
        return CERT_SECRET
