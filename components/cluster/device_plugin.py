"""GpuDevicePlugin: makes the stack's accelerator schedulable as an extended resource."""

from __future__ import annotations

from typing import Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s
import yaml

from components.cluster.accelerators import Accelerator
from components.config import Image
from components.core.chart_source import release_source

DEFAULT_IMAGE: Image = "squat/generic-device-plugin:0.1.0"
NAME = "generic-device-plugin"
NVIDIA_REPO = "https://nvidia.github.io/k8s-device-plugin"
NVIDIA_CHART_VERSION = "0.20.0"


class GpuDevicePluginArgs(TypedDict):
    accelerator: Accelerator


def device_spec(accel: Accelerator) -> str:
    """The --device YAML: one group of paths, shareable by `share_count` pods."""
    assert accel.resource is not None  # a shared host device (Vulkan) has its extended resource
    kind = accel.resource.split("/", 1)[1]
    return yaml.safe_dump(
        {"name": kind, "groups": [{"count": accel.share_count, "paths": [{"path": accel.device_path}]}]},
        sort_keys=False,
    )


class GpuDevicePlugin(pulumi.ComponentResource):
    # The resource pods ask for, or None when nothing needed installing.
    resource_name: Optional[str]
    installed: str

    def __init__(self, name: str, args: GpuDevicePluginArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:GpuDevicePlugin", name, None, opts)
        accel = args["accelerator"]
        self.resource_name = accel.resource
        self.daemon_set: Optional[k8s.apps.v1.DaemonSet] = None

        self.release: Optional[k8s.helm.v3.Release] = None
        if accel.device_plugin == "generic":
            self.daemon_set = self._generic_device_plugin(name, accel)
            self.installed = f"{NAME} advertising {accel.device_path} as {accel.resource}"
        elif accel.device_plugin == "nvidia-chart":
            self.release = self._nvidia_device_plugin(name, accel)
            self.installed = f"nvidia-device-plugin {NVIDIA_CHART_VERSION} on GPU nodes, advertising {accel.resource}"
        elif accel.device_plugin == "managed":
            self.installed = f"nothing: the cloud runs the device plugin (and drivers) for {accel.resource}"
        else:
            self.installed = "nothing: CPU-only serving needs no device plugin"
        self.register_outputs({"resourceName": self.resource_name, "installed": self.installed})

    def _nvidia_device_plugin(self, name: str, accel: Accelerator):
        return k8s.helm.v3.Release(
            f"{name}-nvidia",
            name="nvidia-device-plugin",
            **release_source("nvidia-device-plugin", NVIDIA_CHART_VERSION, NVIDIA_REPO),
            namespace="nvidia-device-plugin",
            create_namespace=True,
            values={
                # Only GPU nodes, whose taint it tolerates: the same facts the model pods use. The
                # chart's own affinity also stays: the GPU node group carries the label it accepts.
                "nodeSelector": dict(accel.node_selector),
                "tolerations": list(accel.tolerations),
                # GPU feature discovery needs node-feature-discovery, whose worker tolerates only
                # `nvidia.com/gpu=present`; nothing here reads the labels they add.
                "gfd": {"enabled": False},
            },
            # GPU nodes may scale from zero: the DaemonSet is ready with no pods.
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _generic_device_plugin(self, name: str, accel: Accelerator):
        labels = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "llm-platform"}
        return k8s.apps.v1.DaemonSet(
            f"{name}-daemonset",
            metadata={"name": NAME, "namespace": "kube-system", "labels": labels},
            spec={
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "priorityClassName": "system-node-critical",
                        # It talks to the kubelet's socket, not to the API server.
                        "automountServiceAccountToken": False,
                        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                        # Runs on every node, whatever its taints.
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{
                            "name": NAME,
                            "image": DEFAULT_IMAGE,
                            "args": ["--device", device_spec(accel)],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 30},
                            "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "10Mi"},
                                "limits": {"cpu": "50m", "memory": "20Mi"},
                            },
                            # Documented exception to the restricted profile: it must see and
                            # hand out host devices.
                            "securityContext": {"privileged": True, "readOnlyRootFilesystem": True},
                            "volumeMounts": [
                                {"name": "device-plugins", "mountPath": "/var/lib/kubelet/device-plugins"},
                                {"name": "dev", "mountPath": "/dev"},
                            ],
                        }],
                        "volumes": [
                            {"name": "device-plugins", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}},
                            {"name": "dev", "hostPath": {"path": "/dev"}},
                        ],
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
