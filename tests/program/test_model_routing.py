"""What the program renders for the ingress's own model routing: which models it routes straight
and how (the body-based router on amd64 nodes, the key check's mark for one Service without it),
what still goes to the front door, BBR's pod, and the order an upgrade applies it in. The data path
itself runs for real in tests/parts/test_edge_path.py."""

from __future__ import annotations

import json

import pytest

from components.edge import model_routing as routing
from tests import ingress_routes as ingress
from tests.conftest import AUTOSCALED, PODS
from tools import mock_engine as harness

ENVOY_FILTER = "kubernetes:networking.istio.io/v1alpha3:EnvoyFilter"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CLIENT_KEY = "sk-routing-client-0123456789abcdef"
PROVIDERS = {"llm-platform:frontDoor": {"providers": [
    {"name": "gpt-mini", "model": "openai/gpt-4o-mini", "apiBase": "https://api.openai.com/v1"}]},
    "llm-platform:providerKeys": {"gpt-mini": "sk-provider-not-used-0123456789"}}


def _run(stack: str, overrides: dict | None = None):
    return harness.run(stack, {"llm-platform:apiKey": CLIENT_KEY, **(overrides or {})},
                       secrets=("llm-platform:apiKey", "llm-platform:providerKeys"))


def _routes(rec) -> dict[str, dict]:
    return ingress.rules(rec)


def _patches(rec) -> list[dict]:
    return rec.one(ENVOY_FILTER).inputs["spec"]["configPatches"]


def _chain(rec) -> list[str]:
    """The HTTP filters the patches add, in the order the ingress runs them: each INSERT_FIRST goes
    before those applied earlier."""
    chain: list[str] = []
    for p in _patches(rec):
        if p["applyTo"] == "HTTP_FILTER" and p["patch"]["operation"] != "MERGE":
            assert p["patch"]["operation"] == "INSERT_FIRST", p["patch"]["operation"]
            chain.insert(0, p["patch"]["value"]["name"])
    return chain


def _lua(rec) -> str:
    (lua,) = [p["patch"]["value"]["typed_config"]["default_source_code"]["inline_string"]
              for p in _patches(rec) if p["applyTo"] == "HTTP_FILTER" and p["patch"]["value"]["name"] == routing.LUA_FILTER]
    return lua


@pytest.fixture(scope="module")
def eks():
    return _run("eks")


def test_on_amd64_nodes_the_body_picks_each_models_route(eks):
    routes = _routes(eks)
    names = list(routes)
    # What only the front door takes, then one rule per model, then the rest of /v1.
    assert names[0] == routing.FRONT_DOOR_ROUTE
    models = [n for n in names if n.startswith("model-")]
    assert models and names.index("v1") > max(names.index(n) for n in models)
    for name in models:
        alias = name.removeprefix("model-")
        (match,) = routes[name]["matches"]
        assert match == {"path": {"type": "PathPrefix", "value": "/v1"},
                         "headers": [{"type": "Exact", "name": routing.MODEL_HEADER, "value": alias}]}
        (ref,) = routes[name]["backendRefs"]
        assert ref["namespace"] == "models"
        assert routes[name]["timeouts"] == {"request": "0s"}
        # The header BBR sets takes the request to that model's server; without it, the front door.
        assert ingress.answer(eks, 80, "anything", "/v1/chat/completions", "POST", {routing.MODEL_HEADER: alias}) == \
            f"{ref['name']}.models.svc.cluster.local"
    assert ingress.answer(eks, 80, "anything", "/v1/chat/completions", "POST") == "litellm.front-door.svc.cluster.local"
    # The key check runs first, then BBR, both before anything of Istio's own on the chain.
    assert _chain(eks) == [routing.LUA_FILTER, routing.BBR_FILTER]
    for p in _patches(eks):
        if p["applyTo"] == "HTTP_FILTER" and p["patch"]["operation"] == "INSERT_FIRST":
            assert p["match"]["listener"]["filterChain"]["filter"] == {"name": routing.HCM_FILTER}
    # istiod's own external processor for the pools' pickers is sent no credentials.
    (merge,) = [p for p in _patches(eks) if p["applyTo"] == "HTTP_FILTER" and p["patch"]["operation"] == "MERGE"]
    assert merge["match"]["listener"]["filterChain"]["filter"]["subFilter"] == {"name": routing.POOL_FILTER}
    assert {r["exact"] for r in merge["patch"]["value"]["typed_config"]["forward_rules"]["disallowed_headers"]
            ["patterns"]} == {"authorization", "x-api-key", "api-key", "cookie"}
    # BBR is not asked on pages, nor where the front door takes the request anyway.
    off = {p["match"]["routeConfiguration"]["vhost"]["route"]["name"] for p in _patches(eks) if p["applyTo"] == "HTTP_ROUTE"}
    assert off == {"ui", "grafana", "to-https", routing.FRONT_DOOR_ROUTE}
    assert "local KNOWN_KEY_ROUTE = nil" in _lua(eks)


def test_the_body_based_router_runs_without_credentials_on_amd64(eks):
    bbr = eks.one(DEPLOYMENT, "model-routing-bbr").inputs["spec"]["template"]["spec"]
    assert bbr["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert bbr["automountServiceAccountToken"] is False
    (c,) = bbr["containers"]
    assert c["image"] == routing.BBR_IMAGE and c["args"] == routing.bbr_args()
    assert {"name": "KUBECONFIG", "value": f"{routing.KUBECONFIG_DIR}/{routing.KUBECONFIG_FILE}"} in c["env"]
    kubeconfig = json.loads(eks.one("kubernetes:core/v1:ConfigMap", "model-routing-bbr-kubeconfig")
                            .inputs["data"][routing.KUBECONFIG_FILE])
    assert kubeconfig["users"] == [{"name": "none", "user": {}}]
    assert c["lifecycle"]["preStop"] == {"sleep": {"seconds": routing.PRE_STOP_SECONDS}}


def test_the_router_never_sees_the_key_and_runs_where_one_can_go(eks):
    (bbr,) = [p["patch"]["value"] for p in _patches(eks) if p["patch"]["value"].get("name") == routing.BBR_FILTER]
    config = bbr["typed_config"]
    # Without it, the request goes on without a model header: to the front door.
    assert config["failure_mode_allow"] is True
    assert config["processing_mode"]["request_body_mode"] == "BUFFERED"
    (limit,) = [p["patch"]["value"] for p in _patches(eks) if p["applyTo"] == "LISTENER"]
    assert limit == {"per_connection_buffer_limit_bytes": routing.BODY_LIMIT_BYTES}
    assert eks.one(DEPLOYMENT, "model-routing-bbr").inputs["spec"]["replicas"] >= 2
    assert eks.one("kubernetes:policy/v1:PodDisruptionBudget", "model-routing-bbr-pdb")
    assert {"exact": "authorization"} in config["forward_rules"]["disallowed_headers"]["patterns"]
    assert config["processing_mode"]["response_body_mode"] == "NONE"
    assert config["processing_mode"]["response_header_mode"] == "SKIP"


def test_the_filter_holds_a_digest_never_the_key(eks):
    text = json.dumps(eks.one(ENVOY_FILTER).inputs)
    assert CLIENT_KEY not in text
    assert "local KEY_SALT = " in _lua(eks)


def test_a_model_at_zero_is_woken_by_the_front_door_so_not_routed_straight():
    rec = _run("eks", AUTOSCALED)
    assert not [n for n in _routes(rec) if n.startswith("model-")]


def test_minikube_on_apple_silicon_routes_the_router_straight_without_bbr():
    rec = _run("local")
    assert not [r for r in rec.of_type(DEPLOYMENT) if r.name == "model-routing-bbr"]
    routes = _routes(rec)
    assert routes[routing.SERVED_ROUTE]["backendRefs"] == [
        {"kind": "Service", "name": "llama-router", "namespace": "models", "port": 8080}]
    assert ingress.answer(rec, 80, harness.MINIKUBE_IP, "/v1/chat/completions", "POST",
                          {routing.ROUTE_HEADER: routing.SERVED_MARK}) == "llama-router.models.svc.cluster.local"
    assert [p["applyTo"] for p in _patches(rec)] == ["HTTP_FILTER"]
    assert _chain(rec) == [routing.LUA_FILTER]
    assert 'local KNOWN_KEY_ROUTE = "served"' in _lua(rec)


TWO_SERVERS = {**PODS, "llm-platform:models": [{"name": "alpha", "file": "alpha.gguf"}, {"name": "beta", "file": "beta.gguf"}]}


@pytest.mark.parametrize("overrides", [PODS, TWO_SERVERS, PROVIDERS], ids=["one-server", "a-server-per-model", "providers"])
def test_without_bbr_only_the_router_is_reached_straight(overrides):
    """A llama-server of one model answers whatever model a body names: without BBR to read the
    name, only llama.cpp's router (which refuses names it does not serve) is reached straight."""
    rec = _run("local", overrides)
    routes = _routes(rec)
    assert list(routes)[:2] == [routing.FRONT_DOOR_ROUTE, "v1"]
    assert not [n for n in routes if n.startswith("model-") or n == routing.SERVED_ROUTE]
    assert "local KNOWN_KEY_ROUTE = nil" in _lua(rec)


def test_a_new_model_changes_the_routes_never_the_filters():
    """Envoy drains a listener's connections (long streams too) when its filters change, not when
    its routes do: a new model adds its own rule, the filters are the same for any models, and
    the model list (`GET /v1/models`) is the front door's, which knows every model."""
    (model,) = harness.stack_config("eks")["llm-platform:models"]
    one, two = _run("eks"), _run("eks", {"llm-platform:models": [model, {**model, "name": "second"}]})
    assert _patches(one) == _patches(two)
    assert set(_routes(two)) - set(_routes(one)) == {"model-second"}
    assert two.outputs["modelAliases"] == [model["name"], "second"]
    for rec in (one, two):
        for marked in ({}, {routing.ROUTE_HEADER: routing.FRONT_DOOR_MARK}):
            assert ingress.answer(rec, 80, "anything", "/v1/models", headers=marked) == \
                "litellm.front-door.svc.cluster.local"


def test_an_upgrade_routes_straight_only_after_the_servers_and_the_rules_allow_it(eks):
    """The filters wait for the servers (which roll onto the client key) and BBR; the routes wait
    for the filters and for the mesh's and the network's rules that let the ingress in."""
    def depends(name: str, on_type: str, on_name: str) -> bool:
        reg = next(r for r in eks.registrations if r.name == name)
        target = next(r for r in eks.registrations if r.type == on_type and r.name == on_name)
        return target.urn in eks.depends_transitively(reg)

    assert depends("model-routing-ingress-filters", DEPLOYMENT, "model-routing-bbr")
    servers = [r.name for r in eks.of_type("llm-platform:index:LlmServer")]
    assert servers and all(depends("model-routing-ingress-filters", "kubernetes:apps/v1:StatefulSet", f"{s}-statefulset")
                           for s in servers)
    assert depends("gateway-routes", ENVOY_FILTER, "model-routing-ingress-filters")
    assert depends("gateway-routes", "kubernetes:security.istio.io/v1:AuthorizationPolicy", "mesh-callers-models")
    assert depends("gateway-routes", "kubernetes:networking.k8s.io/v1:NetworkPolicy", "models-allow-callers")
