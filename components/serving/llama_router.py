"""LlamaRouter: one llama-server in router mode serving every GGUF model of the stack from
/mnt/models. It holds the GPU once, loads a model on its first request and unloads the least
recently used beyond `modelsMax`, so a laptop offers many models without holding them all."""

from __future__ import annotations

import configparser
import hashlib
import io
from typing import TYPE_CHECKING, Optional, Sequence, TypedDict

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components.cluster.accelerators import Accelerator
from components.config import ModelConfig
from components.core.published import ModelBackend, ScrapeTarget
from components.platform.api_keys import KEYS_DIGEST_ANNOTATION
from components.serving.pods import (
    CONTAINER_SECURITY,
    PROBE_PERIOD_S,
    ServingSettings,
    api_keys_volume,
    fetch_command,
    pod_security,
)
from components.serving.runtimes import (
    ALL_LAYERS,
    API_KEYS_FILE,
    API_KEYS_MOUNT,
    LLAMA_CPP_PORT,
    METRICS_KEY,
    METRICS_PATH,
    MODELS_MOUNT,
    RUNTIMES,
    TERMINATION_GRACE_S,
    llama_router_pre_stop,
    model_path,
)

if TYPE_CHECKING:
    from components.config import LlamaRouterConfig, VllmModel

NAME = "llama-router"
# The router answers /metrics for one model at a time (?model=<alias>), and by default loads
# that model to answer, evicting another beyond --models-max: a scrape must not. With
# autoload=false an unloaded model's scrape fails (400 "model is not loaded") and loads nothing.
METRICS_PARAMS = {"autoload": ("false",)}
PRESETS_DIR = "/etc/llama-router"
PRESETS_FILE = "presets.ini"
PRESETS_DIGEST_ANNOTATION = "llm-platform/presets-digest"


class _Presets(configparser.ConfigParser):
    def optionxform(self, optionstr: str) -> str:
        return optionstr  # keys are flag names: keep their case


def presets(models: Sequence[ModelConfig], accel: Accelerator) -> str:
    """llama.cpp's model presets: one section per model, named by its alias (the id clients
    send), with its file and context size; `[*]` holds what every model shares."""
    ini = _Presets(interpolation=None)
    ini["*"] = {"ngl": str(ALL_LAYERS)} if accel.resource else {}
    for m in models:
        ini[m.name] = {"model": model_path(m), "c": str(m.ctx_size)}
    out = io.StringIO()
    out.write("version = 1\n\n")
    ini.write(out)
    return out.getvalue()


def router_args(models_max: int, api_auth: bool, threads: int) -> list[str]:
    # The router starts each model's llama-server with its own flags, and these override a
    # preset's: nothing per model belongs here.
    args = [
        "--host", "0.0.0.0",
        "--port", str(LLAMA_CPP_PORT),
        "--models-preset", f"{PRESETS_DIR}/{PRESETS_FILE}",
        "--models-max", str(models_max),
        # One compute thread per CPU of the limit, not per host core, for each model instance.
        "--threads", str(threads),
        "--metrics",
    ]
    if api_auth:
        args += ["--api-key-file", f"{API_KEYS_MOUNT}/{API_KEYS_FILE}"]
    return args


class LlamaRouterArgs(TypedDict):
    # What every server of the stack shares: accelerator, namespace, host models, keys, security.
    serving: ServingSettings
    config: "LlamaRouterConfig"
    # The stack's models: in router mode (vulkan or none) the config admits llama.cpp ones alone.
    models: Sequence["ModelConfig | VllmModel"]


class LlamaRouter(pulumi.ComponentResource):
    port: int = LLAMA_CPP_PORT
    service_host: pulumi.Output[str]

    def __init__(self, name: str, args: LlamaRouterArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:LlamaRouter", name, None, opts)
        cfg, accel = args["config"], args["serving"].accelerator
        namespace = pulumi.Output.from_input(args["serving"].namespace)
        child = pulumi.ResourceOptions(parent=self)
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/component": "model-server",
                  "app.kubernetes.io/part-of": "llm-platform"}
        meta = {"namespace": namespace, "labels": labels}
        models: list[ModelConfig] = []
        for m in args["models"]:
            assert isinstance(m, ModelConfig), f"{m.name}: the router serves llama.cpp models only"
            models.append(m)
        claim = args["serving"].host_models_claim
        assert claim is not None  # llama.cpp models read their files from the host folder: it is claimed

        # Runs where Pulumi runs: each file is downloaded only when absent, then verified.
        fetches = [
            command.local.Command(f"{name}-{m.name}-model-file", create=fetch_command(m, args["serving"].host_models_dir),
                                  opts=pulumi.ResourceOptions(parent=self))
            for m in models if args["serving"].host_models_dir
        ]
        preset_text = presets(models, accel)
        config_map = k8s.core.v1.ConfigMap(
            f"{name}-presets", metadata={**meta, "name": f"{NAME}-presets"},
            data={PRESETS_FILE: preset_text}, opts=child,
        )
        volumes = [
            {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}},
            {"name": "presets", "configMap": {"name": config_map.metadata.name}},
            {"name": "tmp", "emptyDir": {}},
        ]
        mounts = [
            {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
            {"name": "presets", "mountPath": PRESETS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ]
        # llama-server reads its presets only at start: a model added or removed must restart it
        # (the ConfigMap itself is updated in place).
        annotations: dict[str, pulumi.Input[str]] = {PRESETS_DIGEST_ANNOTATION: hashlib.sha256(preset_text.encode()).hexdigest()}
        if args["serving"].api_keys is not None:
            # As for every model server: a file from a Secret, and a rotated key rolls the pod.
            annotations[KEYS_DIGEST_ANNOTATION] = api_keys_volume(
                self, name, {**meta, "name": f"{NAME}-api-keys"}, API_KEYS_FILE, args["serving"].api_keys,
                child, volumes, mounts)

        # The router is the only pod on the GPU: it asks for one share of it.
        accelerators = {accel.resource: "1"} if accel.resource else {}
        probe = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
        runtime = RUNTIMES[("llama-cpp", accel.kind)]
        container = {
            "name": "server",
            "image": cfg.image or runtime.image,
            "args": router_args(cfg.models_max, args["serving"].api_keys is not None, cfg.resources.threads),
            # The model instances it starts are llama-server processes too; HOME for their caches.
            "env": [{"name": "HOME", "value": "/tmp"}],
            "ports": [{"name": "http", "containerPort": LLAMA_CPP_PORT, "protocol": "TCP"}],
            "resources": {
                "requests": {"cpu": cfg.resources.cpu, "memory": cfg.resources.memory, **accelerators},
                "limits": {"cpu": cfg.resources.cpu_limit, "memory": cfg.resources.memory_limit, **accelerators},
            },
            "volumeMounts": mounts,
            # The router answers /health as soon as it listens; models load on demand.
            "startupProbe": {**probe, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": 30},
            "readinessProbe": {**probe, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": 3},
            "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 5},
            # Leave the Service's endpoints, then wait (bounded) until no model has a request in
            # flight: llama.cpp cuts generations on SIGTERM.
            "lifecycle": {"preStop": llama_router_pre_stop(LLAMA_CPP_PORT, [m.name for m in args["models"]])},
        }
        if runtime.command:
            container["command"] = runtime.command
        if args["serving"].restricted:
            container["securityContext"] = dict(CONTAINER_SECURITY)
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={**meta, "name": NAME},
            spec={
                "replicas": 1,
                # One GPU holder: the old pod goes before the new one takes the device.
                "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": {
                    "priorityClassName": args["serving"].priority_class,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                    "securityContext": pod_security(args["serving"].restricted, args["serving"].supplemental_groups),
                    "containers": [container],
                    "nodeSelector": dict(accel.node_selector) or None,
                    "tolerations": list(accel.tolerations) or None,
                    "volumes": volumes,
                }},
            },
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=fetches)),
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service", metadata={**meta, "name": NAME},
            spec={"selector": labels,
                  "ports": [{"name": "http", "port": LLAMA_CPP_PORT, "targetPort": "http", "protocol": "TCP"}]},
            opts=child,
        )
        self.service_host = pulumi.Output.concat(
            self.service.metadata.name, ".", self.service.metadata.namespace, ".svc.cluster.local")
        # One endpoint per model: an unloaded model's target is down, not loaded by Prometheus.
        self.scrape_target = ScrapeTarget(
            name=NAME, namespace=namespace, selector=labels, port="http", path=METRICS_PATH,
            bearer=(f"{NAME}-api-keys", METRICS_KEY) if args["serving"].api_keys is not None else None,
            models=tuple(m.name for m in args["models"]), per_model=True, params=METRICS_PARAMS)
        # Every alias reaches the one server: it routes by the request's "model".
        base_url = pulumi.Output.concat("http://", self.service_host, f":{self.port}/v1")
        self.backends = [ModelBackend(m.name, base_url, host=self.service_host, port=self.port) for m in args["models"]]
        self.register_outputs({"serviceHost": self.service_host, "port": self.port})
