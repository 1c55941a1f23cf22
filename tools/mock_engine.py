"""Run the real `__main__.py` for a stack under Pulumi's mock engine and record every
registration: type, name, inputs, parent, dependencies and provider.

The mocks answer as the providers would: Kubernetes objects come back as applied, a Helm
release reports itself deployed, and a local command returns what it prints on the host.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pulumi
import yaml
from pulumi.runtime import mocks as pulumi_mocks, rpc, settings
from pulumi.runtime.stack import Stack, run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

PROJECT_DIR = Path(__file__).resolve().parent.parent
PROJECT = "llm-platform"
STACKS = ("local", "eks", "gke")

if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

# What the host prints for the commands the local cluster runs.
MINIKUBE_IP = "192.168.105.2"
# What AWS and GCP would answer.
ACCOUNT = "123456789012"
DEPLOYER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/deployer"
LB_HOSTNAME = "a1b2c3d4-0123456789.elb.us-west-2.amazonaws.com"
LB_IP = "34.117.0.1"
CA_DATA = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"
KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTi0tLS0t
    server: https://192.168.105.2:8443
  name: llm-platform
contexts:
- context: {cluster: llm-platform, user: llm-platform}
  name: llm-platform
current-context: llm-platform
users:
- name: llm-platform
  user: {client-certificate-data: LS0tLS1CRUdJTi0tLS0t, client-key-data: LS0tLS1CRUdJTi0tLS0t}
"""


def is_secret(value: Any) -> bool:
    """Whether a recorded input is a Pulumi secret (kept encrypted in state and previews)."""
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def reveal(value: Any) -> Any:
    """The plain value of a recorded input, secrets unwrapped at any depth."""
    if is_secret(value):
        return reveal(value["value"])
    if isinstance(value, dict):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


@dataclass
class Registration:
    type: str
    name: str
    urn: str
    inputs: dict
    parent: str
    dependencies: list[str]
    provider: str
    custom: bool
    retain_on_delete: bool = False
    # How long the engine waits on create/update ("" where the default applies).
    custom_timeouts: Optional[dict] = None
    # Input properties the engine leaves as they are in state.
    ignore_changes: tuple[str, ...] = ()

    @property
    def provider_urn(self) -> str:
        # A provider reference is "<urn>::<id>".
        return self.provider.rsplit("::", 1)[0] if self.provider else ""


@dataclass
class Recording:
    stack: str
    registrations: list[Registration]
    outputs: dict[str, Any]
    secret_outputs: set[str]

    def of_type(self, type_: str) -> list[Registration]:
        return [r for r in self.registrations if r.type == type_]

    def one(self, type_: str, name: Optional[str] = None) -> Registration:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> Registration:
        return next(r for r in self.registrations if r.urn == urn)

    def named(self, name: str) -> Registration:
        return next(r for r in self.registrations if r.name == name)

    def model_servers(self) -> list[Registration]:
        """The model servers' workloads (Deployments, or StatefulSets where they cache weights),
        found by their component label: other Deployments (the front door's) are not servers."""
        return [
            r for r in self.of_type("kubernetes:apps/v1:Deployment") + self.of_type("kubernetes:apps/v1:StatefulSet")
            if (r.inputs.get("metadata") or {}).get("labels", {}).get("app.kubernetes.io/component") == "model-server"
        ]

    def kubernetes_objects(self) -> list[Registration]:
        """Objects applied to the cluster (not providers, not Helm releases, not the components
        that apply manifests from files, such as a ConfigGroup)."""
        return [
            r for r in self.registrations
            if r.type.startswith("kubernetes:") and "helm.sh" not in r.type and r.custom
        ]

    def ancestors(self, reg: Registration) -> list[Registration]:
        out = []
        while reg.parent:
            try:
                reg = self.by_urn(reg.parent)
            except StopIteration:
                break
            out.append(reg)
        return out

    def depends_transitively(self, reg: Registration) -> set[str]:
        """URNs `reg` waits for: directly, through its provider, or through what those wait for
        (a component's dependencies count for its children, and waiting on it waits on them)."""
        seen: set[str] = set()
        todo = list(reg.dependencies) + ([reg.provider_urn] if reg.provider else [])
        for anc in self.ancestors(reg):
            todo += anc.dependencies
        while todo:
            urn = todo.pop()
            if urn in seen:
                continue
            seen.add(urn)
            try:
                dep = self.by_urn(urn)
            except StopIteration:
                continue
            todo += dep.dependencies + ([dep.provider_urn] if dep.provider else [])
            # Waiting on a component waits on all its children.
            todo += [r.urn for r in self.registrations if r.parent == urn]
        return seen


class ProgramFailed(Exception):
    """The program stopped with `error` after registering `registrations`."""

    def __init__(self, error: Exception, registrations: list[Registration]):
        super().__init__(str(error))
        self.error = error
        self.registrations = registrations


class _Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        state = dict(args.inputs)
        if args.typ == "command:local:Command":
            state.update(stdout=_host_stdout(args.inputs.get("create", "")), stderr="")
        elif args.typ == "kubernetes:helm.sh/v3:Release":
            state["status"] = {
                "name": args.inputs.get("name"),
                "namespace": args.inputs.get("namespace"),
                "version": args.inputs.get("version"),
                "chart": args.inputs.get("chart"),
                "status": "deployed",
                "revision": 1,
            }
        elif args.typ == "tls:index/privateKey:PrivateKey":
            state["private_key_pem"] = _pem("EC PRIVATE KEY", args.name)
        elif args.typ == "tls:index/selfSignedCert:SelfSignedCert":
            state["cert_pem"] = _pem("CERTIFICATE", args.name)
        elif args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = hashlib.sha256(args.name.encode()).hexdigest()[: int(args.inputs["length"])]
        elif args.typ == "kubernetes:core/v1:Service" and args.resource_id:
            # A read of the live ingress Service: its load balancer is up.
            point = {"ip": LB_IP} if pulumi.get_stack() == "gke" else {"hostname": LB_HOSTNAME}
            state["status"] = {"loadBalancer": {"ingress": [point]}}
        elif args.typ == "aws:eks/cluster:Cluster":
            state.update(endpoint="https://0123ABCD.gr7.us-west-2.eks.amazonaws.com",
                         certificateAuthority={"data": CA_DATA}, status="ACTIVE")
        elif args.typ == "gcp:container/cluster:Cluster":
            state.update(endpoint="34.30.0.10", masterAuth={"clusterCaCertificate": CA_DATA})
        if args.typ.startswith("aws:"):
            state.setdefault("arn", f"arn:aws:{args.typ.split(':')[1].split('/')[0]}::{ACCOUNT}:{args.name}")
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT, "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/deployer/ci",
                    "userId": "AROAEXAMPLE:ci", "id": ACCOUNT}
        if args.token == "aws:iam/getSessionContext:getSessionContext":
            return {"arn": args.args["arn"], "issuerArn": DEPLOYER_ROLE, "issuerId": "AROAEXAMPLE",
                    "issuerName": "deployer", "sessionName": "ci", "id": args.args["arn"]}
        raise NotImplementedError(f"the mocks do not answer {args.token}")


def _pem(kind: str, name: str) -> str:
    """A stand-in PEM block, stable per resource name (the mocks make no real keys)."""
    return f"-----BEGIN {kind}-----\n{hashlib.sha256(name.encode()).hexdigest()}\n-----END {kind}-----\n"


def _host_stdout(cmd: str) -> str:
    if cmd.startswith("kubectl config view"):
        return KUBECONFIG
    if cmd.startswith("minikube ip"):
        return MINIKUBE_IP + "\n"
    return ""


class _Monitor(pulumi_mocks.MockMonitor):
    def __init__(self, mocks):
        super().__init__(mocks)
        self.recorded: list[Registration] = []

    def RegisterResource(self, request):
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            urn = self.make_urn(request.parent, request.type, request.name)
            self.recorded.append(Registration(
                type=request.type,
                name=request.name,
                urn=urn,
                inputs=pulumi.runtime.rpc.deserialize_properties(request.object),
                parent=request.parent,
                dependencies=list(request.dependencies),
                provider=request.provider,
                custom=request.custom,
                retain_on_delete=bool(request.retainOnDelete),
                ignore_changes=tuple(request.ignoreChanges),
                custom_timeouts={"create": request.customTimeouts.create, "update": request.customTimeouts.update},
            ))
        return response


def stack_config(stack: str) -> dict[str, Any]:
    """The stack file's config, keyed as the engine passes it (objects as JSON text)."""
    doc = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text()) or {}
    return dict(doc.get("config") or {})


def run(stack: str, overrides: Optional[dict[str, Any]] = None, remove: tuple[str, ...] = (),
        secrets: tuple[str, ...] = ()) -> Recording:
    """Run the program for `stack` with its real config (plus overrides; `secrets` names the
    keys the engine would pass as secrets) and record it."""
    config = stack_config(stack)
    for key in remove:
        config.pop(key, None)
    config.update(overrides or {})
    engine_config = {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()
    }

    monitor = _Monitor(_Mocks())
    settings.ROOT.set(None)
    pulumi.runtime.set_mocks(monitor.mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(engine_config, list(secrets))
    root = settings.get_root_resource()
    assert isinstance(root, Stack)  # set_mocks made it

    def program() -> None:
        runpy.run_path(str(PROJECT_DIR / "__main__.py"), run_name="__main__")

    try:
        _sync_await(run_pulumi_func(program))
    except Exception as err:
        raise ProgramFailed(err, list(monitor.recorded)) from err

    outputs, secret = {}, set()
    for key, value in root.outputs.items():
        out = pulumi.Output.from_input(value)
        outputs[key] = _sync_await(out.future())
        if _sync_await(out.is_secret()):
            secret.add(key)
    return Recording(stack, list(monitor.recorded), outputs, secret)
