"""The pods of the Gateway API Inference Extension's servers that the ingress asks per request (the
body-based router, a pool's endpoint picker): one shape for both, from the extension's image and
what the ingress needs of them."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import pulumi

from components.core.replicas import spread_over_nodes

# The extension's images are distroless and run as their `nonroot` user, named by number so the
# kubelet can check it.
EXTENSION_USER = 65532


def extension_deployment_spec(
    container: str, image: str, args: Sequence[str], *,
    labels: Mapping[str, str], replicas: int, spread: bool, service_account: pulumi.Input[str], api_token: bool,
    ports: Mapping[str, int], resources: dict, readiness_probe: dict, liveness_probe: dict, pre_stop_seconds: int,
    config_map: pulumi.Input[str], config_volume: str, config_dir: str, env: Optional[Mapping[str, str]] = None,
) -> dict:
    """A Deployment's spec of `replicas` pods with `labels`, each one container (`container`, of
    `image`, run with `args`): as the extension's image user, on amd64 nodes, with a read-only root
    filesystem and no capabilities, its TCP `ports` (name -> number), `resources` and probes, the
    ConfigMap `config_map` mounted read-only at `config_dir`, and `env` (name -> value). A rollout
    starts a new pod before it stops an old one, and a stopping pod waits `pre_stop_seconds` (the
    ingress asks it until it learns it is gone). With `spread` (a workload run at a replica count
    the stack sets) the pods name their spread over nodes and zones, none for a single replica.
    Without `api_token` no service account token is mounted."""
    main = {
        "name": container,
        "image": image,
        "args": list(args),
        **({"env": [{"name": k, "value": v} for k, v in env.items()]} if env else {}),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in ports.items()],
        "resources": resources,
        "readinessProbe": readiness_probe,
        "livenessProbe": liveness_probe,
        "lifecycle": {"preStop": {"sleep": {"seconds": pre_stop_seconds}}},
        "volumeMounts": [{"name": config_volume, "mountPath": config_dir, "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    pod = {
        "serviceAccountName": service_account,
        **({} if api_token else {"automountServiceAccountToken": False}),
        "securityContext": {"runAsNonRoot": True, "runAsUser": EXTENSION_USER, "runAsGroup": EXTENSION_USER,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        # The images are published for amd64 alone.
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "containers": [main],
        "volumes": [{"name": config_volume, "configMap": {"name": config_map}}],
        **({"topologySpreadConstraints": spread_over_nodes(labels, replicas)} if spread else {}),
    }
    return {
        "replicas": replicas,
        "selector": {"matchLabels": dict(labels)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {"metadata": {"labels": dict(labels)}, "spec": pod},
    }
