"""LlmServer: one OpenAI-compatible model server for one model: a Deployment on the host's
model files, or a StatefulSet whose replicas each cache the weights on a volume of their own;
plus its Service."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Literal, NotRequired, Optional, Sequence, TypedDict

import pulumi
import pulumi_command as command
import pulumi_kubernetes as k8s

from components.cluster.accelerators import Accelerator
from components.config import quantity_bytes
from components.core.published import ModelBackend, ScrapeTarget
from components.core.replicas import one_at_a_time
from components.platform.api_keys import KEYS_DIGEST_ANNOTATION
from components.serving.autoscaling import ScaledServer
from components.serving.pods import (
    CONTAINER_SECURITY,
    PROBE_PERIOD_S,
    ServingSettings,
    api_keys_volume,
    fetch_command,
    pod_security,
)
from components.serving.runtimes import (
    API_KEY_ENTRIES,
    CACHE_MOUNT,
    METRICS_KEY,
    METRICS_PATH,
    MODELS_MOUNT,
    TERMINATION_GRACE_S,
    ServerSpec,
    server_spec,
)

if TYPE_CHECKING:
    from components.config import ModelConfig, ServedModel, VllmModel

# A first start downloads the weights from the model hub: assume a modest steady rate.
DOWNLOAD_MIB_S = 50
# Beyond moving bytes: CUDA graph capture, or XLA compiling every shape on a TPU.
LOAD_MINUTES = {"nvidia": 10, "tpu": 45}
# Transfers rarely run at the nominal rate for the whole time.
TRANSFER_MARGIN = 1.5
# Pulumi waits this much beyond the pods' own startup budget (scheduling, image pull).
AWAIT_MARGIN_MINUTES = 10


# Every model server's pods carry this (the router's too).
SERVER_LABELS = {"app.kubernetes.io/component": "model-server"}


class LlmServerArgs(TypedDict):
    # What every server of the stack shares: accelerator, namespace, host models, keys, security.
    serving: ServingSettings
    model: "ModelConfig | VllmModel"
    # StorageClass of the model caches (servers that download weights), and the MiB/s one
    # such volume sustains (None: unknown).
    storage_class: Optional[pulumi.Input[str]]
    cache_throughput_mib_s: Optional[int]
    # Accelerator units all model servers on this accelerator hold together.
    units_in_use: int
    # Whether the namespace's quota (a team's) leaves room for one more pod in a rollout; absent:
    # no quota there.
    quota_room: NotRequired[bool]
    # What must exist before the server's pods (a team's quota: pods created first go uncounted).
    ready: NotRequired[Sequence[pulumi.Resource]]
    # The holder of the one client key the server takes (a team's), for the ingress's routes.
    key_holder: NotRequired[Optional[str]]
    # Hugging Face token (a Pulumi secret), for gated models; None for public ones.
    hf_token: Optional[pulumi.Output[str]]


def startup_minutes(model: ServedModel, accel: Accelerator, spec: ServerSpec, throughput_mib_s: Optional[int]) -> int:
    """How long the slowest start may take: downloading the weights onto the cache, reading
    them back, then loading/compiling. A model of unstated size gets the runtime's allowance,
    which is also the floor."""
    weights = getattr(model, "weights_size", None)
    if not weights or not throughput_mib_s:
        return spec.startup_minutes
    mib = quantity_bytes(weights) / 2**20
    transfer_s = mib / min(DOWNLOAD_MIB_S, throughput_mib_s) + mib / throughput_mib_s
    derived = LOAD_MINUTES.get(accel.kind, 0) + TRANSFER_MARGIN * transfer_s / 60
    return max(spec.startup_minutes, math.ceil(derived))


class LlmServer(pulumi.ComponentResource):
    alias: str
    namespace: pulumi.Output[str]
    port: int
    service_host: pulumi.Output[str]
    workload: k8s.apps.v1.Deployment | k8s.apps.v1.StatefulSet
    workload_kind: Literal["Deployment", "StatefulSet"]

    def __init__(self, name: str, args: LlmServerArgs, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:LlmServer", name, None, opts)
        model, accel = args["model"], args["serving"].accelerator
        spec = server_spec(model, accel, api_auth=args["serving"].api_keys is not None)
        spec = dataclasses.replace(
            spec, startup_minutes=startup_minutes(model, accel, spec, args["cache_throughput_mib_s"]))
        self.alias = model.name
        self.port = spec.port
        self.namespace = pulumi.Output.from_input(args["serving"].namespace)
        k8s_opts = pulumi.ResourceOptions(parent=self)
        labels = {"app.kubernetes.io/name": model.name, **SERVER_LABELS, "app.kubernetes.io/part-of": "llm-platform"}
        # What an inference pool selects: this server's pods.
        self.pod_labels = labels
        meta = {"namespace": self.namespace, "labels": labels}

        waits_for: list[pulumi.Resource] = list(args.get("ready", []))
        volumes, mounts, env = [], [], [{"name": k, "value": v} for k, v in spec.env.items()]
        annotations: dict = {}
        claim_templates = None
        if spec.model_store == "host":
            volumes.append({"name": "models", "persistentVolumeClaim": {
                "claimName": args["serving"].host_models_claim, "readOnly": True}})
            mounts.append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
            if args["serving"].host_models_dir:
                # Only GGUF files live on the host (the runtime table's "host" store is llama.cpp's).
                assert model.runtime == "llama-cpp", f"{model.name}: a {model.runtime} model on the host's folder"
                # Runs where Pulumi runs: downloads only when the file is absent, then
                # verifies it, so a second `up` never downloads again.
                waits_for.append(command.local.Command(
                    f"{name}-model-file",
                    create=fetch_command(model, args["serving"].host_models_dir),
                    opts=pulumi.ResourceOptions(parent=self),
                ))
        else:
            claim_templates = self._model_cache(name, model, meta, args, k8s_opts, mounts, env)
        if spec.api_keys_file:
            api_keys = args["serving"].api_keys
            assert api_keys is not None  # a keys file only where the server has keys (api_auth above)
            annotations[KEYS_DIGEST_ANNOTATION] = api_keys_volume(
                self, name, {**meta, "name": f"{model.name}-api-keys"}, spec.api_keys_file,
                # vLLM leaves /metrics open: no scraper key where none is asked for.
                {e: api_keys[e] for e in API_KEY_ENTRIES if e in api_keys and (spec.metrics_need_key or e != METRICS_KEY)},
                k8s_opts, volumes, mounts)
        if args["serving"].restricted:
            # The root filesystem is read-only: scratch space and HOME live here.
            volumes.append({"name": "tmp", "emptyDir": {}})
            mounts.append({"name": "tmp", "mountPath": "/tmp"})
            if "HOME" not in spec.env:
                env.append({"name": "HOME", "value": "/tmp"})
        if spec.shared_memory:
            volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
            mounts.append({"name": "shm", "mountPath": "/dev/shm"})

        template = {
            "metadata": {"labels": labels, "annotations": annotations or None},
            "spec": {
                "priorityClassName": args["serving"].priority_class,
                # Model servers never call the Kubernetes API.
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
                "securityContext": pod_security(args["serving"].restricted, args["serving"].supplemental_groups),
                "containers": [_container(model, accel, spec, env, mounts, args["serving"].restricted)],
                "nodeSelector": dict(accel.node_selector) or None,
                "tolerations": list(accel.tolerations) or None,
                "volumes": volumes,
            },
        }
        budget = spec.startup_minutes
        if claim_templates is None:
            self.workload = k8s.apps.v1.Deployment(
                f"{name}-deployment",
                metadata={**meta, "name": model.name},
                spec={
                    **replicas_field(model),
                    "progressDeadlineSeconds": budget * 60,
                    "strategy": rollout_strategy(accel, spec.accelerators, args["units_in_use"],
                                                 args.get("quota_room", True)),
                    "selector": {"matchLabels": labels},
                    "template": template,
                },
                opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
                    depends_on=waits_for,
                    custom_timeouts=_timeouts(budget + AWAIT_MARGIN_MINUTES, budget + AWAIT_MARGIN_MINUTES),
                )),
            )
        else:
            self.workload = k8s.apps.v1.StatefulSet(
                f"{name}-statefulset",
                metadata={**meta, "name": model.name},
                spec=stateful_spec(model, labels, template, claim_templates),
                # Replicas start together, but an update replaces them one by one, each of which
                # may have to download again (a changed model): Pulumi waits for all of them.
                opts=pulumi.ResourceOptions.merge(k8s_opts, pulumi.ResourceOptions(
                    depends_on=waits_for,
                    # A new cacheSize replaces it (claim templates are immutable); the name is
                    # fixed, so the old StatefulSet goes first. Its preview fails (docs/cloud-stacks.md).
                    delete_before_replace=True,
                    custom_timeouts=_timeouts(
                        budget + AWAIT_MARGIN_MINUTES,
                        max(model.most_replicas, 1) * (budget + math.ceil(TERMINATION_GRACE_S / 60)) + AWAIT_MARGIN_MINUTES,
                    ),
                )),
            )
        self.workload_kind = "Deployment" if claim_templates is None else "StatefulSet"
        # An autoscaler's scale-down never goes through the budget at all.
        if model.most_replicas > 1:
            k8s.policy.v1.PodDisruptionBudget(
                f"{name}-pdb",
                metadata={**meta, "name": model.name},
                spec=one_at_a_time(labels),
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
        # Prometheus presents its own key (the metrics entry) where /metrics wants one.
        self.scrape_target = ScrapeTarget(
            name=f"model-{model.name}", namespace=self.namespace, selector=labels, port="http", path=METRICS_PATH,
            bearer=(f"{model.name}-api-keys", METRICS_KEY) if spec.metrics_need_key else None,
            models=(model.name,))
        # What the front door routes the alias to (vLLM's --served-model-name, llama.cpp's --alias).
        self.backend = ModelBackend(self.alias, pulumi.Output.concat("http://", self.service_host, f":{self.port}/v1"),
                                    host=self.service_host, port=self.port, key_holder=args.get("key_holder"))
        # What KEDA sizes, where the model autoscales.
        self.scaled_server = ScaledServer(
            name=model.name, kind=self.workload_kind, runtime=model.runtime, autoscaling=model.autoscaling,
            workload=self.workload) if model.autoscaling.enabled else None
        self.register_outputs({"alias": self.alias, "serviceHost": self.service_host, "port": self.port})

    def _model_cache(self, name, model, meta: dict, args: LlmServerArgs, opts, mounts, env) -> list[dict]:
        """Each replica's own volume for the weights (and compiled XLA graphs): restarts and
        rollouts never download again, and no two pods share a ReadWriteOnce disk. Plus the
        Hugging Face token, when there is one, from a Secret."""
        mounts.append({"name": CACHE_VOLUME, "mountPath": CACHE_MOUNT})
        if args["hf_token"] is not None:
            token = k8s.core.v1.Secret(
                f"{name}-hf-token",
                metadata={**meta, "name": f"{model.name}-hf-token"},
                string_data={"HF_TOKEN": args["hf_token"]},
                opts=opts,
            )
            env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                "name": token.metadata.name, "key": "HF_TOKEN"}}})
        return [{
            "metadata": {"name": CACHE_VOLUME, "labels": meta["labels"]},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": args["storage_class"],
                "resources": {"requests": {"storage": model.cache}},
            },
        }]



CACHE_VOLUME = "cache"


def _timeouts(create_minutes: int, update_minutes: int) -> pulumi.CustomTimeouts:
    return pulumi.CustomTimeouts(create=f"{create_minutes}m", update=f"{update_minutes}m")


def rollout_strategy(accel: Accelerator, units: int, in_use: int, quota_room: bool = True) -> dict:
    """For servers on the host's model files (a read-only claim any new pod can mount): never
    drop the last ready replica when the accelerators that are really there (or that an
    autoscaler adds) hold one more pod, and the namespace's quota admits it (a surge pod over
    quota is never created, and the rollout would wait for it forever); otherwise replace in
    place."""
    if quota_room and accel.fits_surge(units, in_use):
        return {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    return {"type": "Recreate"}


def replicas_field(model: ServedModel) -> dict:
    """The replica count Pulumi sets, or none where KEDA sets it: a server-side apply that named
    the field would take it back from the autoscaler on every `up`."""
    return {} if model.autoscaling.enabled else {"replicas": model.replicas}


def stateful_spec(model: ServedModel, labels: dict, template: dict, claim_templates: list[dict]) -> dict:
    """Replica N always mounts claim cache-<name>-N. A rolling update replaces one pod at a time
    on its own claim, so it never needs a second accelerator or a second copy of the weights;
    with more than one replica the others keep serving."""
    return {
        # The Service that selects the pods (per-pod DNS is not needed).
        "serviceName": model.name,
        **replicas_field(model),
        # Replicas download and start together, not one after another.
        "podManagementPolicy": "Parallel",
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
        # A replica scaled away and back finds its weights again. The claims go with the
        # StatefulSet: they carry its owner reference (blocking), so a foreground delete (Pulumi's)
        # ends once they are deleted, and `destroy` never leaves a claim, and its disk, to outlive
        # the cluster. A replaced StatefulSet (a new cacheSize) starts on new claims.
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
        "selector": {"matchLabels": labels},
        "template": template,
        "volumeClaimTemplates": claim_templates,
    }


def _container(model: ServedModel, accel: Accelerator, spec: ServerSpec, env: list, mounts: list, restricted: bool) -> dict:
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
