"""LlmServer: one OpenAI-compatible model server (Deployment + Service) for one model."""

from __future__ import annotations

import hashlib
import hmac
import shlex
from typing import Optional, TypedDict

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s
import pulumi_random as random

from .accelerators import Accelerator
from .serving import (
    API_KEY_ENTRIES, API_KEYS_MOUNT, CACHE_MOUNT, MODELS_MOUNT, TERMINATION_GRACE_S, ServerSpec,
    api_keys_file_content, server_spec,
)

PROBE_PERIOD_S = 10
# A fixed non-root identity above the host's range; fsGroup makes the cache writable for it.
RUN_AS = 10001
# Pod-template annotation that changes with the API keys: servers read them only at start, so
# a rotated key rolls the pods.
KEYS_DIGEST_ANNOTATION = "llm-platform/api-keys-digest"


class LlmServerArgs(TypedDict):
    model: object  # ModelConfig or VllmModel
    accelerator: Accelerator
    namespace: pulumi.Input[str]
    provider: k8s.Provider
    # Host folder mounted on the node at /mnt/models; GGUF files are fetched there.
    host_models_dir: Optional[str]
    # The namespace's claim on the node's /mnt/models (servers that read GGUF files from it).
    host_models_claim: Optional[pulumi.Input[str]]
    # StorageClass of the model cache PVC (servers that download weights).
    storage_class: Optional[pulumi.Input[str]]
    # Hugging Face token (a Pulumi secret), for gated models; None for public ones.
    hf_token: Optional[pulumi.Output[str]]
    priority_class: pulumi.Input[str]
    # API keys the server accepts (Pulumi secrets), by role ("client", "ui"); None: open API.
    api_keys: Optional[dict[str, pulumi.Output[str]]]
    # Keep the model cache PVC when the stack is destroyed.
    retain_cache: bool
    # Run under the restricted Pod Security profile (non-root, no privilege, read-only root).
    restricted: bool
    # Extra groups (e.g. the node's render group for /dev/dri).
    supplemental_groups: list[int]


def fetch_command(model, models_dir: str) -> str:
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
    namespace: pulumi.Output[str]
    port: int
    service_host: pulumi.Output[str]

    def __init__(self, name: str, args: LlmServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:LlmServer", name, None, opts)
        model, accel, provider = args["model"], args["accelerator"], args["provider"]
        spec = server_spec(model, accel, api_auth=args["api_keys"] is not None)
        self.alias = model.name
        self.port = spec.port
        self.namespace = pulumi.Output.from_input(args["namespace"])
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=provider)
        labels = {
            "app.kubernetes.io/name": model.name,
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/part-of": "llm-platform",
        }
        meta = {"namespace": self.namespace, "labels": labels}

        waits_for: list[pulumi.Resource] = []
        volumes, mounts, env = [], [], [{"name": k, "value": v} for k, v in spec.env.items()]
        annotations: dict = {}
        if spec.model_store == "host":
            volumes.append({"name": "models", "persistentVolumeClaim": {
                "claimName": args["host_models_claim"], "readOnly": True}})
            mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
            if args["host_models_dir"]:
                # Runs where Pulumi runs: downloads only when the file is absent, then
                # verifies it, so a second `up` never downloads again.
                waits_for.append(command.local.Command(
                    f"{name}-model-file",
                    create=fetch_command(model, args["host_models_dir"]),
                    opts=pulumi.ResourceOptions(parent=self),
                ))
        else:
            self._model_cache(name, model, meta, args, k8s_opts, volumes, mounts, env)
        if spec.api_keys_file:
            annotations[KEYS_DIGEST_ANNOTATION] = self._api_keys(
                name, model.name, meta, spec, args["api_keys"], k8s_opts, volumes, mounts)
        if args["restricted"]:
            # The root filesystem is read-only: scratch space and HOME live here.
            volumes.append({"name": "tmp", "emptyDir": {}})
            mounts.append({"name": "tmp", "mountPath": "/tmp"})
            if "HOME" not in spec.env:
                env.append({"name": "HOME", "value": "/tmp"})
        if spec.shared_memory:
            volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
            mounts.append({"name": "shm", "mountPath": "/dev/shm"})

        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={**meta, "name": model.name},
            spec={
                "replicas": model.replicas,
                "progressDeadlineSeconds": spec.startup_minutes * 60,
                "strategy": rollout_strategy(accel, spec.accelerators, model.replicas),
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": annotations or None},
                    "spec": {
                        "priorityClassName": args["priority_class"],
                        # Model servers never call the Kubernetes API.
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                        "securityContext": pod_security(args["restricted"], args["supplemental_groups"]),
                        "containers": [_container(model, accel, spec, env, mounts, args["restricted"])],
                        "nodeSelector": dict(accel.node_selector) or None,
                        "tolerations": list(accel.tolerations) or None,
                        "volumes": volumes,
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
                depends_on=waits_for,
                custom_timeouts=pulumi.CustomTimeouts(
                    create=f"{spec.startup_minutes + 10}m", update=f"{spec.startup_minutes + 10}m"
                ),
            )),
        )
        if model.replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb",
                metadata={**meta, "name": model.name},
                spec={"maxUnavailable": 1, "selector": {"matchLabels": labels}},
                opts=k8s_opts,
            )
        self.service = k8s.core.v1.Service(
            f"{name}-service",
            metadata={**meta, "name": model.name},
            spec={
                "selector": labels,
                "ports": [{"name": "http", "port": spec.port, "targetPort": "http", "protocol": "TCP"}],
            },
            opts=k8s_opts,
        )
        self.service_host = pulumi.Output.concat(
            self.service.metadata.name, ".", self.service.metadata.namespace, ".svc.cluster.local"
        )
        self.register_outputs({"alias": self.alias, "serviceHost": self.service_host, "port": self.port})

    def _model_cache(self, name, model, meta: dict, args: LlmServerArgs, opts, volumes, mounts, env) -> None:
        """Weights (and compiled XLA graphs) on a PVC that outlives pods: restarts never download
        again; plus the Hugging Face token, when there is one, from a Secret."""
        cache = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-cache",
            metadata={**meta, "name": f"{model.name}-cache",
                      # Bound only when its pod is scheduled (WaitForFirstConsumer): do not await.
                      "annotations": {"pulumi.com/skipAwait": "true"}},
            spec={
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": args["storage_class"],
                "resources": {"requests": {"storage": model.cache_size}},
            },
            # Destroying the stack keeps downloaded weights unless config says otherwise.
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(retain_on_delete=args["retain_cache"])),
        )
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": cache.metadata.name}})
        mounts.append({"name": "cache", "mountPath": CACHE_MOUNT})
        if args["hf_token"] is not None:
            token = k8s.core.v1.Secret(
                f"{name}-hf-token",
                metadata={**meta, "name": f"{model.name}-hf-token"},
                string_data={"HF_TOKEN": args["hf_token"]},
                opts=opts,
            )
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": token.metadata.name, "key": "HF_TOKEN"}}})

    def _api_keys(self, name, alias: str, meta, spec: ServerSpec, keys: dict, opts, volumes, mounts) -> pulumi.Output[str]:
        """The keys reach the server as a file from a Secret: never in its args, env or logs.
        Returns a digest of them for the pod template, so that a new key rolls the pods."""
        ordered = pulumi.Output.all(*(keys[e] for e in API_KEY_ENTRIES))
        secret = k8s.core.v1.Secret(
            f"{name}-api-keys",
            metadata={**meta, "name": f"{alias}-api-keys"},
            string_data={
                **{entry: keys[entry] for entry in API_KEY_ENTRIES},
                spec.api_keys_file: ordered.apply(lambda ks: api_keys_file_content(spec.api_keys_file, ks)),
            },
            opts=opts,
        )
        volumes.append({"name": "api-keys", "secret": {
            "secretName": secret.metadata.name,
            "items": [{"key": spec.api_keys_file, "path": spec.api_keys_file}]}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_MOUNT, "readOnly": True})
        # A keyed digest: a plain hash of a chosen (weak) key could be guessed offline from the
        # pod spec; the salt stays in the stack's encrypted state.
        salt = random.RandomPassword(f"{name}-keys-digest-salt", length=32, special=False,
                                     opts=pulumi.ResourceOptions(parent=self))
        digest = pulumi.Output.all(salt.result, ordered).apply(
            lambda v: hmac.new(v[0].encode(), "\n".join(v[1]).encode(), hashlib.sha256).hexdigest())
        # Not a secret (nothing can be recovered from it): keep the pod template readable in diffs.
        return pulumi.Output.unsecret(digest)


def rollout_strategy(accel: Accelerator, units: int, replicas: int) -> dict:
    """Never drop the last ready replica when a new pod fits beside the old ones; where the
    accelerators cannot hold one more pod (a single GPU, a TPU host), replace in place."""
    if accel.fits_surge(units, replicas):
        return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    return {"type": "Recreate"}


POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "fsGroup": RUN_AS,
    "seccompProfile": {"type": "RuntimeDefault"},
}
def pod_security(restricted: bool, groups: list[int]) -> Optional[dict]:
    context = {**(POD_SECURITY if restricted else {}), **({"supplementalGroups": groups} if groups else {})}
    return context or None


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "readOnlyRootFilesystem": True,
}


def _container(model, accel: Accelerator, spec: ServerSpec, env: list, mounts: list, restricted: bool) -> dict:
    probe = {"httpGet": {"path": spec.health_path, "port": "http"}, "timeoutSeconds": 5}
    accelerators = {accel.resource: str(spec.accelerators)} if accel.resource else {}
    container = {
        "name": "server",
        "image": spec.image,
        "args": spec.args,
        "env": env or None,
        "ports": [{"name": "http", "containerPort": spec.port, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": model.resources.cpu, "memory": model.resources.memory, **accelerators},
            "limits": {"cpu": model.resources.cpu_limit, "memory": model.resources.memory_limit, **accelerators},
        },
        "volumeMounts": mounts,
        # /health answers 503 while the model loads and 200 once it can serve.
        "startupProbe": {
            **probe, "periodSeconds": PROBE_PERIOD_S,
            "failureThreshold": spec.startup_minutes * 60 // PROBE_PERIOD_S,
        },
        "readinessProbe": {**probe, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": 3},
        "livenessProbe": {**probe, "periodSeconds": 30, "failureThreshold": 5},
        # Leave the Service's endpoints, then let requests in flight finish before SIGTERM
        # (llama.cpp) or on it (vLLM's --shutdown-timeout).
        "lifecycle": {"preStop": spec.pre_stop},
    }
    if spec.command:
        container["command"] = spec.command
    if restricted:
        container["securityContext"] = dict(CONTAINER_SECURITY)
    return container
