"""LlmServer: one OpenAI-compatible model server (Deployment + Service) for one model."""

from __future__ import annotations

import shlex
from typing import Optional, TypedDict

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from .accelerators import Accelerator
from .config import ModelConfig
from .serving import MODELS_MOUNT, server_spec

# A multi-GB model can take many minutes to load; the startup probe allows 30 minutes.
STARTUP_PERIOD_S = 10
STARTUP_FAILURES = 180


class LlmServerArgs(TypedDict):
    model: ModelConfig
    accelerator: Accelerator
    namespace: pulumi.Input[str]
    provider: k8s.Provider
    # Host folder mounted on the node at /mnt/models; the model file is fetched there.
    host_models_dir: Optional[str]


def fetch_command(model: ModelConfig, models_dir: str) -> str:
    argv = ["python3", "scripts/fetch_model.py", "--dest", f"{models_dir}/{model.file}"]
    if model.download_url:
        argv += ["--url", model.download_url]
    if model.sha256:
        argv += ["--sha256", model.sha256]
    if model.size_bytes:
        argv += ["--size", str(model.size_bytes)]
    return shlex.join(argv)


class LlmServer(pulumi.ComponentResource):
    alias: str
    service_name: str
    namespace: pulumi.Output[str]
    port: int
    service_host: pulumi.Output[str]

    def __init__(self, name: str, args: LlmServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:LlmServer", name, None, opts)
        model, accel, provider = args["model"], args["accelerator"], args["provider"]
        spec = server_spec(model, accel)
        self.alias = model.name
        self.service_name = model.name
        self.port = spec.port
        self.namespace = pulumi.Output.from_input(args["namespace"])

        waits_for: list[pulumi.Resource] = []
        if args["host_models_dir"]:
            # Runs on the machine running Pulumi: downloads only when the file is absent,
            # then verifies it, so a second `up` never downloads again.
            waits_for.append(command.local.Command(
                f"{name}-model-file",
                create=fetch_command(model, args["host_models_dir"]),
                opts=pulumi.ResourceOptions(parent=self),
            ))

        labels = {
            "app.kubernetes.io/name": model.name,
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": "llm-platform",
        }
        probe = {"httpGet": {"path": spec.health_path, "port": "http"}, "timeoutSeconds": 5}
        container = {
            "name": "server",
            "image": spec.image,
            "args": spec.args,
            "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
            "resources": {
                "requests": {"cpu": model.resources.cpu, "memory": model.resources.memory},
                "limits": {
                    "cpu": model.resources.cpu_limit,
                    "memory": model.resources.memory_limit,
                    **accel.limits(),
                },
            },
            "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}],
            # /health answers 503 while the model loads and 200 once it can serve.
            "startupProbe": {**probe, "periodSeconds": STARTUP_PERIOD_S, "failureThreshold": STARTUP_FAILURES},
            "readinessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 3},
            "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 5},
        }
        if spec.command:
            container["command"] = spec.command

        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={"name": model.name, "namespace": self.namespace, "labels": labels},
            spec={
                "replicas": model.replicas,
                "progressDeadlineSeconds": STARTUP_PERIOD_S * STARTUP_FAILURES,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [container],
                        "nodeSelector": dict(accel.node_selector) or None,
                        "tolerations": list(accel.tolerations) or None,
                        "volumes": [{
                            "name": "models",
                            "hostPath": {"path": MODELS_MOUNT, "type": "Directory"},
                        }],
                    },
                },
            },
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=provider,
                depends_on=waits_for,
                custom_timeouts=pulumi.CustomTimeouts(create="40m", update="40m"),
            ),
        )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={"name": model.name, "namespace": self.namespace, "labels": labels},
            spec={
                "selector": labels,
                "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
            },
            opts=pulumi.ResourceOptions(parent=self, provider=provider),
        )
        self.service_host = pulumi.Output.concat(
            self.service.metadata.name, ".", self.service.metadata.namespace, ".svc.cluster.local"
        )
        self.register_outputs({"alias": self.alias, "serviceHost": self.service_host, "port": self.port})
