"""Gateway: the one way in. A Gateway API Gateway on the mesh's ingress (the gateway chart's pods,
bound by their Service's address: istiod deploys none of its own) and one HTTPRoute: `/v1` -> the
front door (every model, by name) after the models' own rules, `/grafana` -> Grafana, `/` -> the
chat UI; with TLS, plain HTTP only redirects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NotRequired, Optional, Sequence, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from components.config import CertManagerConfig
from components.core.chart_source import release_source
from components.edge import http_routes
from components.edge.endpoint_picker import POOL_API_GROUP
from components.edge.front_door import INTERNAL_RESPONSE_HEADERS
from components.platform.mesh import GATEWAY_NAME, HTTP_PORT, HTTPS_PORT, INGRESS_CLASS, INGRESS_CONTROLLER, Mesh
from components.platform.monitoring import GRAFANA_PATH

CERT_MANAGER_REPO = "https://charts.jetstack.io"
CERT_SECRET = "llm-gateway-tls"
ACME_ISSUER = "llm-platform-acme"
GATEWAY_API = "gateway.networking.k8s.io/v1"
GATEWAY_CLASS = "istio"
ROUTES_NAME = "llm-routes"
# The rules' names (Envoy's routes' too); those that serve pages, not the API, are never asked
# which model a body names.
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
    # The namespaces of every backend the routes name (name -> the namespace's name as an output of
    # the object that makes it): each lets the routes refer to its Services.
    backend_namespaces: Mapping[str, pulumi.Input[str]]
    # Those of them whose inference pools the routes name too.
    pool_namespaces: NotRequired[Sequence[str]]
    # API rules besides the catch-all `/v1` -> `api` (model_routing.model_routes), and what they
    # wait for.
    model_routes: NotRequired[Sequence[dict]]
    routes_ready: NotRequired[Sequence[pulumi.Resource]]


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
        namespace = mesh.ingress_namespace
        same_namespace = {"namespaces": {"from": "Same"}}
        listener: dict = {"name": "http", "port": HTTP_PORT, "protocol": "HTTP", "allowedRoutes": same_namespace}
        if host:
            listener["hostname"] = host
        listeners = [listener]
        if tls_secret:
            listeners.append({**listener, "name": "https", "port": HTTPS_PORT, "protocol": "HTTPS",
                              "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": tls_secret}]}})

        # Gateway API objects need their CRDs, and istiod to serve them.
        opts_cr = pulumi.ResourceOptions(parent=self, depends_on=[mesh.gateway_api, mesh.istiod, mesh.gateway])
        self.gateway = k8s.apiextensions.CustomResource(
            f"{name}-gateway",
            api_version=GATEWAY_API,
            kind="Gateway",
            metadata={"name": GATEWAY_NAME, "namespace": namespace},
            # Bound by address to the ingress Service the mesh installs: istiod configures its pods
            # and deploys nothing itself. The listeners are that Service's ports.
            spec={"gatewayClassName": GATEWAY_CLASS,
                  "addresses": [{"type": "Hostname", "value": mesh.ingress_service_name}],
                  "listeners": listeners},
            opts=opts_cr,
        )
        # The routes name Services in other namespaces: each of those lets this namespace's
        # HTTPRoutes do so, once.
        grants = [k8s.apiextensions.CustomResource(
            f"{name}-routes-to-{key}",
            api_version=GATEWAY_API,
            kind="ReferenceGrant",
            metadata={"name": f"{ROUTES_NAME}-from-{namespace}", "namespace": ns},
            spec={"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": namespace}],
                  "to": [{"group": "", "kind": "Service"},
                         *([{"group": POOL_API_GROUP, "kind": "InferencePool"}]
                           if key in args.get("pool_namespaces", ()) else [])]},
            opts=pulumi.ResourceOptions(parent=self, depends_on=[mesh.gateway_api]),
        ) for key, ns in sorted(args["backend_namespaces"].items()) if key != namespace]

        def page(rule_name: str, prefix: str, backend: Backend) -> dict:
            return http_routes.rule(rule_name, http_routes.prefix_match(prefix),
                                    http_routes.service_ref(backend.host, backend.port), INTERNAL_RESPONSE_HEADERS)

        rules = [*args.get("model_routes", ()),
                 http_routes.rule(API_ROUTE, http_routes.prefix_match(http_routes.API_PREFIX),
                                  http_routes.service_ref(args["api"].host, args["api"].port),
                                  INTERNAL_RESPONSE_HEADERS, stream=True)]
        if args["grafana"]:
            rules.append(page(GRAFANA_ROUTE, GRAFANA_PATH, args["grafana"]))
        if args["ui"]:
            rules.append(page(UI_ROUTE, "/", args["ui"]))
        # With TLS the platform answers only on HTTPS; port 80 only redirects (below).
        section = "https" if tls_secret else "http"
        hostnames = {"hostnames": [host]} if host else {}
        self.routes = k8s.apiextensions.CustomResource(
            f"{name}-routes",
            api_version=GATEWAY_API,
            kind="HTTPRoute",
            metadata={"name": ROUTES_NAME, "namespace": namespace},
            spec={"parentRefs": [{"name": GATEWAY_NAME, "sectionName": section}], **hostnames, "rules": rules},
            opts=pulumi.ResourceOptions.merge(opts_cr, pulumi.ResourceOptions(
                depends_on=[self.gateway, *grants, *args.get("routes_ready", ())])),
        )
        if tls_secret:
            # Plain HTTP is sent to HTTPS. cert-manager's HTTP-01 challenge, served on port 80
            # before any certificate exists, still answers: istiod turns the solver's Ingress
            # into an exact-path route of the same host, which goes before this catch-all.
            self.redirect = k8s.apiextensions.CustomResource(
                f"{name}-https-redirect",
                api_version=GATEWAY_API,
                kind="HTTPRoute",
                metadata={"name": "llm-https-redirect", "namespace": namespace},
                spec={"parentRefs": [{"name": GATEWAY_NAME, "sectionName": "http"}], **hostnames, "rules": [{
                    "name": REDIRECT_ROUTE,
                    "filters": [{"type": "RequestRedirect",
                                 "requestRedirect": {"scheme": "https", "statusCode": 301}}],
                }]},
                opts=pulumi.ResourceOptions.merge(opts_cr, pulumi.ResourceOptions(depends_on=[self.gateway])),
            )

            # A stepping stone from the edge of earlier releases (Istio's own Gateway, named alike,
            # with an HTTPS server for the same host): istiod cannot tell the two HTTPS servers
            # apart and Envoy refuses a listener with both, so a gateway pod starting while both
            # exist would serve no HTTPS at all. That Gateway keeps its plain-HTTP server alone
            # (which merges with this listener's), changed only once the Gateway API's routes are
            # in place; on a new stack it is just that. A later release removes it.
            k8s.apiextensions.CustomResource(
                f"{name}-gateway",
                api_version="networking.istio.io/v1",
                kind="Gateway",
                metadata={"name": GATEWAY_NAME, "namespace": namespace},
                spec={"selector": dict(mesh.ingress_selector),
                      "servers": [{"port": {"number": HTTP_PORT, "name": "http", "protocol": "HTTP"},
                                   "hosts": [host] if host else ["*"]}]},
                opts=pulumi.ResourceOptions(parent=self, depends_on=[mesh.base, mesh.istiod, self.gateway, self.routes,
                                                                     self.redirect]),
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
