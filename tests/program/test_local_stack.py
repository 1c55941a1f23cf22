"""What a user of `pulumi up -s local` would check, asserted on the recorded program."""

import shlex

import yaml

from tests import ingress_routes as ingress
from tests.conftest import PODS
from tools import mock_engine as harness

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
COMMAND = "command:local:Command"
RELEASE = "kubernetes:helm.sh/v3:Release"


def _server_container(rec, alias="tinyllama"):
    dep = rec.one(DEPLOYMENT, f"model-{alias}-deployment")
    return dep, dep.inputs["spec"]["template"]["spec"]["containers"][0]


def _flag(args, name):
    return args[args.index(name) + 1]


def test_minikube_uses_krunkit_and_mounts_models_folder(local):
    create = local.one(COMMAND, "cluster-minikube").inputs["create"]
    start = shlex.split(create.split("||", 1)[1].strip(" ()"))
    assert start[:2] == ["minikube", "start"]
    assert _flag(start, "--driver") == "krunkit"
    host, guest = _flag(start, "--mount-string").split(":")
    assert guest == "/mnt/models"
    assert host.startswith("/") and host.endswith("/models")  # ~/models, expanded
    assert _flag(start, "--profile") == "llm-platform"
    assert _flag(start, "--kubernetes-version") == "v1.34.0"
    assert local.one(COMMAND, "cluster-minikube").inputs["delete"] == "minikube delete --profile llm-platform"


def test_minikube_create_is_idempotent_when_profile_runs(local):
    create = local.one(COMMAND, "cluster-minikube").inputs["create"]
    assert "minikube status --profile llm-platform >/dev/null 2>&1 ||" in create


def test_device_plugin_advertises_dev_dri(local):
    ds = local.one("kubernetes:apps/v1:DaemonSet", "gpu-daemonset").inputs
    pod = ds["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    device = yaml.safe_load(_flag(args, "--device"))
    assert device["name"] == "dri"
    assert device["groups"] == [{"count": 4, "paths": [{"path": "/dev/dri"}]}]
    assert {"name": "dev", "hostPath": {"path": "/dev"}} in pod["volumes"]
    assert ds["metadata"]["namespace"] == "kube-system"


def test_model_server_asks_for_the_gpu_and_offloads_all_layers(local_pods):
    _, c = _server_container(local_pods)
    assert c["resources"]["limits"]["squat.ai/dri"] == "1"
    assert c["command"] == ["llama-server"]
    assert int(_flag(c["args"], "-ngl")) >= 999
    assert _flag(c["args"], "--host") == "0.0.0.0"
    assert _flag(c["args"], "--alias") == "tinyllama"
    # The context the model was trained for (TinyLlama: 2048), threads as many as the CPU limit.
    assert _flag(c["args"], "--ctx-size") == "0"
    assert _flag(c["args"], "--threads") == c["resources"]["limits"]["cpu"] == "4"
    assert c["image"].startswith("quay.io/ramalama/ramalama:")


def test_model_path_is_the_mounted_file(local_pods):
    dep, c = _server_container(local_pods)
    model_path = _flag(c["args"], "-m")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    volume = next(v for v in dep.inputs["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert model_path == f"{mount['mountPath']}/tinyllama-1.1b-chat-v1.0.Q8_0.gguf"
    # The claim is bound to a volume over the node's /mnt/models.
    claim = local_pods.one("kubernetes:core/v1:PersistentVolumeClaim").inputs
    assert claim["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"]
    pv = local_pods.one("kubernetes:core/v1:PersistentVolume").inputs
    assert claim["spec"]["volumeName"] == pv["metadata"]["name"]
    assert claim["spec"]["storageClassName"] == pv["spec"]["storageClassName"]
    assert pv["spec"]["hostPath"]["path"] == mount["mountPath"] == "/mnt/models"
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    # ...and that folder is the one minikube mounts from the host.
    create = local_pods.one(COMMAND, "cluster-minikube").inputs["create"]
    assert f":{mount['mountPath']}" in create


def test_model_file_fetched_into_the_mounted_host_folder_before_the_server(local_pods):
    fetch = local_pods.one(COMMAND, "model-tinyllama-model-file")
    argv = shlex.split(fetch.inputs["create"])
    start = shlex.split(local_pods.one(COMMAND, "cluster-minikube").inputs["create"].split("||", 1)[1].strip(" ()"))
    host_dir = _flag(start, "--mount-string").split(":")[0]
    assert _flag(argv, "--dest") == f"{host_dir}/tinyllama-1.1b-chat-v1.0.Q8_0.gguf"
    assert _flag(argv, "--url") == (
        "https://huggingface.co/TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF/resolve/main/"
        "tinyllama-1.1b-chat-v1.0.Q8_0.gguf"
    )
    dep, _ = _server_container(local_pods)
    assert fetch.urn in dep.dependencies


def test_probes_use_health_and_allow_slow_loads(local_pods):
    _, c = _server_container(local_pods)
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
        assert c[probe]["httpGet"]["port"] in ("http", 8080)
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]


def test_v1_routes_to_the_front_door_and_root_to_the_ui(local):
    svc = local.one(SERVICE, "front-door-service").inputs
    proxy = local.one(DEPLOYMENT, "front-door-deployment").inputs["spec"]["template"]
    routes = ingress.rules(local)
    # One base URL for every model: no per-model prefixes; what the key check marks for the front
    # door goes there, a known key goes straight to the router that serves every model
    # (minikube's arm64 node runs no body-based router: the router reads the name itself), then
    # the rest of /v1 to the front door, the model list too; Grafana under /grafana.
    assert list(routes) == ["front-door", "served-models", "v1", "grafana", "ui"]
    served = routes["served-models"]
    assert served["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"},
                                  "headers": [{"type": "Exact", "name": "x-llm-platform-route", "value": "served"}]}]
    assert served["backendRefs"] == [{"kind": "Service", "name": "llama-router", "namespace": "models", "port": 8080}]
    # No request timeout: a generation streams as long as it takes.
    assert served["timeouts"] == {"request": "0s"}

    v1 = routes["v1"]
    assert v1["matches"] == [{"path": {"type": "PathPrefix", "value": "/v1"}}]
    (ref,) = v1["backendRefs"]
    assert (ref["name"], ref["namespace"]) == (svc["metadata"]["name"], svc["metadata"]["namespace"])
    assert ref["port"] == svc["spec"]["ports"][0]["port"] == proxy["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert svc["spec"]["selector"] == proxy["metadata"]["labels"]
    assert v1["timeouts"] == {"request": "0s"}

    ui = routes["ui"]
    assert ui["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert ui["backendRefs"] == [{"kind": "Service", "name": "open-webui", "namespace": "open-webui", "port": 80}]

    # What a client sees on the node port, the longer prefix first whatever the rules' order.
    front_door = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    for path in ("/v1/chat/completions", "/v1/models", "/v1"):
        assert ingress.answer(local, 80, harness.MINIKUBE_IP, path) == front_door, path
    marked = {"x-llm-platform-route": "served"}
    assert ingress.answer(local, 80, harness.MINIKUBE_IP, "/v1/chat/completions", "POST", marked) == \
        "llama-router.models.svc.cluster.local"
    assert ingress.answer(local, 80, harness.MINIKUBE_IP, "/grafana/") == "kps-grafana.monitoring.svc.cluster.local"
    for path in ("/", "/c/123", "/v1beta"):
        assert ingress.answer(local, 80, harness.MINIKUBE_IP, path) == "open-webui.open-webui.svc.cluster.local", path


def test_every_backend_namespace_lets_the_routes_in():
    """A route naming a Service in another namespace needs that namespace's ReferenceGrant: each
    backend's, and only those."""
    rec = harness.run("local")
    route = ingress.http_route(rec)
    backends = {ref["namespace"] for r in route["spec"]["rules"] for ref in r["backendRefs"]}
    grants = ingress.objects(rec, "ReferenceGrant")
    assert {g["metadata"]["namespace"] for g in grants} == backends == {"front-door", "models", "open-webui", "monitoring"}
    for grant in grants:
        assert grant["spec"] == {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                           "namespace": route["metadata"]["namespace"]}],
                                 "to": [{"group": "", "kind": "Service"}]}
    # Without the front door's grant, its rules answer nothing but an error.
    rec.registrations = [r for r in rec.registrations if r.name != "gateway-routes-to-front-door"]
    assert ingress.answer(rec, 80, harness.MINIKUBE_IP, "/v1/models") == "refused:front-door/litellm"


def test_gateway_binds_to_the_mesh_ingress(local):
    gw = ingress.gateway(local)
    ingress_release = local.one(RELEASE, "mesh-gateway").inputs
    values = ingress_release["values"]
    # Bound by address to the Service the gateway chart makes (named after its release): istiod
    # programs those pods and deploys no gateway of its own.
    assert gw["spec"]["gatewayClassName"] == "istio"
    assert ingress.bound_service(gw) == [(ingress_release["name"], ingress_release["namespace"])]
    assert ingress_release["name"] == "istio-ingress" and ingress_release["namespace"] == gw["metadata"]["namespace"]
    # Each listener is a port of that Service.
    ports = {int(p["port"]) for p in values["service"]["ports"]}
    assert {lst["port"] for lst in gw["spec"]["listeners"]} <= ports
    # The pods carry the Gateway's name, which istiod looks for to configure them for it.
    assert values["labels"] == {"gateway.networking.k8s.io/gateway-name": gw["metadata"]["name"]}
    # The routes attach to it, on its plain HTTP listener here (no TLS on the laptop).
    route = ingress.http_route(local)
    assert route["spec"]["parentRefs"] == [{"name": gw["metadata"]["name"], "sectionName": "http"}]
    assert route["metadata"]["namespace"] == gw["metadata"]["namespace"]
    assert values["service"]["type"] == "NodePort"


def test_open_webui_calls_the_front_door_with_ollama_off_and_storage(local):
    app = local.one("kubernetes:argoproj.io/v1alpha1:Application").inputs
    values = app["spec"]["source"]["helm"]["valuesObject"]
    svc = local.one(SERVICE, "front-door-service").inputs
    assert app["spec"]["source"]["chart"] == "open-webui"
    assert values["ollama"]["enabled"] is False
    # One connection, straight to the front door's Service inside the mesh, not through the
    # public ingress: it lists every model, those added later too.
    assert values["openaiBaseApiUrls"] == [
        f"http://litellm.front-door.svc.cluster.local:{int(svc['spec']['ports'][0]['port'])}/v1"
    ]
    assert values["persistence"]["enabled"] is True


def test_istio_charts_installed_in_order_and_pinned(local):
    base, cni, istiod, gateway = (local.one(RELEASE, f"mesh-{n}") for n in ("base", "cni", "istiod", "gateway"))
    assert base.urn in cni.dependencies
    assert cni.urn in istiod.dependencies
    assert istiod.inputs["values"]["pilot"]["cni"]["enabled"] is True
    assert istiod.urn in gateway.dependencies
    # istiod watches the Gateway API's kinds and the Inference Extension's (switched on): their
    # CRDs come first, from the pinned release files.
    crds = local.one("kubernetes:yaml/v2:ConfigGroup", "mesh-gateway-api-crds")
    assert crds.urn in local.depends_transitively(istiod)
    assert istiod.inputs["values"]["env"]["ENABLE_GATEWAY_API_INFERENCE_EXTENSION"] == "true"
    files = [f.rsplit("/", 1)[1] for f in crds.inputs["files"]]
    assert {"gateway.networking.k8s.io_gateways.yaml", "gateway.networking.k8s.io_httproutes.yaml",
            "gateway.networking.k8s.io_referencegrants.yaml", "inference.networking.k8s.io_inferencepools.yaml"} <= set(files)
    for rel in (base, cni, istiod, gateway):
        assert rel.inputs["repositoryOpts"]["repo"] == "https://istio-release.storage.googleapis.com/charts"
        assert rel.inputs["version"].count(".") == 2
    models_ns = local.one("kubernetes:core/v1:Namespace", "mesh-ns-models")
    assert models_ns.inputs["metadata"]["labels"]["istio-injection"] == "enabled"
    assert istiod.urn in models_ns.dependencies


def test_nothing_waits_on_what_it_does_not_need(local):
    argocd = local.one(RELEASE, "gitops-argocd")
    mesh = {local.one(RELEASE, f"mesh-{n}").urn for n in ("base", "istiod", "gateway")}
    server = local.one(DEPLOYMENT, "llama-router-deployment")
    # Argo CD and the model servers do not wait for Istio's ingress gateway.
    assert not mesh & set(argocd.dependencies)
    assert local.one(RELEASE, "mesh-gateway").urn not in local.depends_transitively(server)
    assert argocd.urn not in local.depends_transitively(server)
    # Mesh does not wait on model files or the device plugin.
    for name in ("mesh-base", "mesh-istiod", "mesh-gateway"):
        deps = local.depends_transitively(local.one(RELEASE, name))
        assert local.one(COMMAND, "llama-router-tinyllama-model-file").urn not in deps
        assert local.one("kubernetes:apps/v1:DaemonSet").urn not in deps


def test_every_kubernetes_resource_uses_the_cluster_provider(local):
    provider = local.one("pulumi:providers:kubernetes")
    assert harness.is_secret(provider.inputs["kubeconfig"])
    assert harness.reveal(provider.inputs["kubeconfig"]) == harness.KUBECONFIG
    applied = [r for r in local.registrations if r.type.startswith("kubernetes:")]
    assert len(applied) >= 10
    for r in applied:
        assert r.provider_urn == provider.urn, r.name


def test_children_are_parented_to_their_components(local):
    components = {r.urn: r for r in local.registrations if r.type.startswith("llm-platform:index:")}
    names = {r.type.removeprefix("llm-platform:index:") for r in components.values()}
    assert names >= {"Cluster", "GpuDevicePlugin", "Mesh", "GatewayApi", "GitOpsController", "LlamaRouter", "FrontDoor",
                     "Gateway"}
    for r in local.registrations:
        if r.custom:
            assert r.parent in components, f"{r.type} {r.name} has no component parent"
    # The Gateway API's CRDs are the mesh's: a child component of it applies them.
    crds = local.one("kubernetes:yaml/v2:ConfigGroup", "mesh-gateway-api-crds")
    assert [a.type for a in local.ancestors(crds)][:2] == ["llm-platform:index:GatewayApi", "llm-platform:index:Mesh"]


def test_all_images_and_charts_pinned(local):
    for r in local.of_type(RELEASE):
        assert r.inputs["version"] and not r.inputs["version"].startswith(("^", "~", ">"))
    for r in local.registrations:
        spec = r.inputs.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            tag = c["image"].rsplit(":", 1)[1]
            assert tag not in ("latest", "dev-slim"), c["image"]


def test_stack_outputs(local):
    out = local.outputs
    assert out["ingressUrl"] == f"http://{harness.MINIKUBE_IP}:30080"
    assert out["apiBaseUrl"] == out["ingressUrl"] + "/v1"
    assert out["uiUrl"] == out["ingressUrl"] + "/"
    assert out["modelAliases"] == ["tinyllama"]
    assert out["kubeconfig"] == harness.KUBECONFIG
    assert "kubeconfig" in local.secret_outputs
    assert local.one(COMMAND, "cluster-kubeconfig") is not None


def test_second_run_registers_identical_resources(local):
    again = harness.run("local")
    first = [(r.type, r.name, r.parent, sorted(r.dependencies), r.inputs) for r in local.registrations]
    second = [(r.type, r.name, r.parent, sorted(r.dependencies), r.inputs) for r in again.registrations]
    assert sorted(first, key=repr) == sorted(second, key=repr)


def test_more_models_each_get_a_server_behind_the_one_front_door():
    """With router mode off: one llama-server pod per model."""
    models = [
        {"name": "tinyllama", "file": "tinyllama-1.1b-chat-v1.0.Q8_0.gguf",
         "hfRepo": "TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF"},
        {"name": "qwen", "file": "qwen2.5-0.5b-instruct-q8_0.gguf",
         "url": "https://example.org/qwen2.5-0.5b-instruct-q8_0.gguf", "ctxSize": 8192},
    ]
    rec = harness.run("local", {"llm-platform:models": models, **PODS})
    assert {r.name for r in rec.of_type(DEPLOYMENT)} == {
        "model-tinyllama-deployment", "model-qwen-deployment", "front-door-deployment"}
    routes = ingress.rules(rec)
    assert [(b["name"], b["namespace"]) for b in routes["v1"]["backendRefs"]] == [("litellm", "front-door")]
    # Two Services and no body-based router on minikube's arm64 node: the front door picks.
    assert list(routes) == ["front-door", "v1", "grafana", "ui"]
    assert ingress.answer(rec, 80, harness.MINIKUBE_IP, "/v1/models") == "litellm.front-door.svc.cluster.local"
    # The front door knows both, by alias.
    config = yaml.safe_load(rec.one("kubernetes:core/v1:ConfigMap", "front-door-config").inputs["data"]["config.yaml"])
    bases = {m["model_name"]: m["litellm_params"]["api_base"] for m in config["model_list"]}
    assert bases["qwen"].startswith("http://qwen.models.svc.cluster.local:") and bases["qwen"].endswith("/v1")
    assert set(bases) == {"tinyllama", "qwen"}
    urls = rec.one("kubernetes:argoproj.io/v1alpha1:Application").inputs["spec"]["source"]["helm"][
        "valuesObject"]["openaiBaseApiUrls"]
    assert len(urls) == 1 and urls[0].startswith("http://litellm.front-door.svc.cluster.local:")
    assert rec.outputs["modelAliases"] == ["tinyllama", "qwen"]


def test_one_router_pod_serves_every_model_from_the_gpu(local):
    """As shipped, local runs llama.cpp's router: one pod holds the GPU share and serves every
    model from the mounted folder, all layers offloaded."""
    assert {r.name for r in local.of_type(DEPLOYMENT)} == {"llama-router-deployment", "front-door-deployment"}
    c = local.one(DEPLOYMENT, "llama-router-deployment").inputs["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["squat.ai/dri"] == "1" and c["command"] == ["llama-server"]
    presets = local.one("kubernetes:core/v1:ConfigMap", "llama-router-presets").inputs["data"]["presets.ini"]
    assert "[*]\nngl = 999\n" in presets
    assert "[tinyllama]\nmodel = /mnt/models/tinyllama-1.1b-chat-v1.0.Q8_0.gguf\n" in presets
