"""Nodes shaped like a stack's node pools, read from what the program registers (EKS node groups
and Karpenter's NodePool, GKE node pools, the minikube command) plus what the kubelet and the cloud add on their own:
well-known labels, the cloud's accelerator taints, allocatable resources, and the extended
resource a device plugin advertises."""

from __future__ import annotations

import shlex
from typing import Optional

import yaml

from tests.kube import NodeShape
from tools.mock_engine import Recording, reveal

# vCPUs, memory (MiB) and, on EKS, the VPC CNI's max pods of the machine types the stack files use.
# A stack with another type fails here, naming it: add its shape from the provider's docs.
MACHINES = {
    "m6i.large": (2, 8192, 29), "m6i.xlarge": (4, 16384, 58),
    "g5.xlarge": (4, 16384, 58), "g6.xlarge": (4, 16384, 58), "g6e.xlarge": (4, 32768, 58),
    "g6.12xlarge": (48, 196608, 234),
    "e2-standard-4": (4, 16384, 110), "g2-standard-8": (8, 32768, 110), "g2-standard-24": (24, 98304, 110),
    "g2-standard-48": (48, 196608, 110),
    "ct5lp-hightpu-1t": (24, 49152, 110), "ct5lp-hightpu-4t": (112, 196608, 110),
    "ct5lp-hightpu-8t": (224, 393216, 110), "ct6e-standard-1t": (44, 458752, 110),
    "ct6e-standard-4t": (180, 737280, 110), "ct6e-standard-8t": (180, 1474560, 110),
}

# What the clouds' documentation says their accelerator machines are, written here rather than
# read from components/core/hardware.py: the program derives its pods' selectors, tolerations and
# requests from that module, so nodes built from it too would move with any mistake there.
# EC2 accelerated instances (aws.amazon.com/ec2/instance-types: G5, G6, G6e): NVIDIA GPUs.
EC2_GPUS = {"g5.xlarge": 1, "g6.xlarge": 1, "g6e.xlarge": 1, "g6.12xlarge": 4}
# GKE TPU machine types (cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus, TPU v5e and
# v6e): the value GKE gives cloud.google.com/gke-tpu-accelerator, the single-host topology it
# gives cloud.google.com/gke-tpu-topology, and the chips on the host (google.com/tpu).
GKE_TPU_MACHINES = {
    "ct5lp-hightpu-1t": ("tpu-v5-lite-podslice", "1x1", 1),
    "ct5lp-hightpu-4t": ("tpu-v5-lite-podslice", "2x2", 4),
    "ct5lp-hightpu-8t": ("tpu-v5-lite-podslice", "2x4", 8),
    "ct6e-standard-1t": ("tpu-v6e-slice", "1x1", 1),
    "ct6e-standard-4t": ("tpu-v6e-slice", "2x2", 4),
    "ct6e-standard-8t": ("tpu-v6e-slice", "2x4", 8),
}
# G2 machine types (cloud.google.com/compute/docs/gpus, "G2 machine series"): attached L4 GPUs.
GKE_G2_GPUS = {"g2-standard-4": 1, "g2-standard-8": 1, "g2-standard-12": 1, "g2-standard-16": 1,
               "g2-standard-24": 2, "g2-standard-32": 1, "g2-standard-48": 4, "g2-standard-96": 8}
# The taints GKE puts on its TPU and GPU nodes (GKE docs: "Deploy TPU workloads", "Run GPUs in
# Standard node pools").
GKE_TPU_TAINT = {"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}
GKE_GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GKE_DEFAULT_ZONES = ("a", "b", "c")
_EFFECT = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}


def _machine(kind: str) -> tuple[int, int, int]:
    if kind not in MACHINES:
        raise KeyError(f"tests/stack_nodes.py: MACHINES has no shape for {kind!r}")
    return MACHINES[kind]


def _cpu_reserved_m(cores: int) -> int:
    """kube-reserved CPU as EKS and GKE compute it: 6% of the first core, 1% of the second,
    0.5% of the next two, 0.25% of the rest."""
    steps = [(1, 60), (1, 10), (2, 5)]
    left, reserved = cores, 0
    for n, m in steps:
        take = min(left, n)
        reserved += take * m
        left -= take
    return reserved + int(left * 2.5)


def _gke_memory_reserved_mi(mem: int) -> int:
    """GKE: 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the next 112,
    2% above; plus 100 MiB eviction threshold."""
    tiers = [(4096, 0.25), (4096, 0.20), (8192, 0.10), (114688, 0.06), (10**9, 0.02)]
    left, reserved = mem, 0.0
    for size, share in tiers:
        take = min(left, size)
        reserved += take * share
        left -= take
    return int(reserved) + 100


def _base_labels(name: str, arch: str, instance: Optional[str], zone: Optional[str]) -> dict:
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": arch}
    if instance:
        labels["node.kubernetes.io/instance-type"] = instance
    if zone:
        labels["topology.kubernetes.io/zone"] = zone
        labels["topology.kubernetes.io/region"] = zone.rsplit("-", 1)[0] if zone[-2] == "-" else zone[:-1]
    return labels


def eks(rec: Recording) -> list[NodeShape]:
    zone_of_subnet = {f"{r.name}-id": reveal(r.inputs)["availabilityZone"]
                      for r in rec.of_type("aws:ec2/subnet:Subnet")}
    shapes = []
    for group in rec.of_type("aws:eks/nodeGroup:NodeGroup"):
        g = reveal(group.inputs)
        instance = g["instanceTypes"][0]
        cores, mem, max_pods = _machine(instance)
        zones = [zone_of_subnet[s] for s in g["subnetIds"]]
        gpus = EC2_GPUS[instance] if "NVIDIA" in g["amiType"] else None
        for i in range(int(g["scalingConfig"]["desiredSize"])):
            zone = zones[i % len(zones)]
            name = f"ip-10-0-{len(shapes)}-10.{zone[:-1]}.compute.internal"
            labels = {**_base_labels(name, "arm64" if "ARM" in g["amiType"] else "amd64", instance, zone),
                      "eks.amazonaws.com/nodegroup": g["nodeGroupName"],
                      "eks.amazonaws.com/capacityType": "ON_DEMAND",
                      **(g.get("labels") or {})}
            taints = [{"key": t["key"], "value": t.get("value"), "effect": _EFFECT[t["effect"]]}
                      for t in g.get("taints") or []]
            shape = NodeShape(name=name, pool=g["nodeGroupName"], labels=labels, taints=taints,
                              cpu=f"{cores * 1000 - _cpu_reserved_m(cores)}m",
                              memory=f"{mem - (11 * max_pods + 255) - 100}Mi", pods=max_pods)
            if gpus:
                # Bottlerocket runs NVIDIA's plugin itself; on AL2023 a plugin pod must come first.
                target = shape.devices if g["amiType"].startswith("BOTTLEROCKET") else shape.devices_from_plugin
                target["nvidia.com/gpu"] = gpus
            shapes.append(shape)
    return shapes + karpenter(rec)


def _custom(rec: Recording, kind: str) -> list[dict]:
    return [reveal(r.inputs) for r in rec.registrations
            if r.type.startswith("kubernetes:") and r.inputs.get("kind") == kind]


def karpenter(rec: Recording, count: Optional[int] = None) -> list[NodeShape]:
    """Nodes as Karpenter launches them for pending pods: the NodePool template's labels and
    taints, one value of each requirement (instance type, zone, capacity type), the labels
    Karpenter adds, the instance type's capacity. `count` defaults to as many as the pool's GPU
    limit allows (all it may ever add)."""
    shapes = []
    classes = {c["metadata"]["name"]: c for c in _custom(rec, "EC2NodeClass")}
    for pool in _custom(rec, "NodePool"):
        spec = pool["spec"]["template"]["spec"]
        node_class = classes[spec["nodeClassRef"]["name"]]
        req = {r["key"]: r["values"] for r in spec["requirements"] if r["operator"] == "In"}
        instance, zone = req["node.kubernetes.io/instance-type"][0], req["topology.kubernetes.io/zone"][0]
        cores, mem, max_pods = _machine(instance)
        gpus = EC2_GPUS[instance]
        limit = int(pool["spec"]["limits"]["nvidia.com/gpu"])
        family = node_class["spec"]["amiSelectorTerms"][0]["alias"].split("@")[0]
        for i in range(limit // gpus if count is None else count):
            name = f"ip-10-0-{100 + len(shapes)}-20.{zone[:-1]}.compute.internal"
            labels = {**_base_labels(name, req.get("kubernetes.io/arch", ["amd64"])[0], instance, zone),
                      "karpenter.sh/nodepool": pool["metadata"]["name"],
                      "karpenter.k8s.aws/ec2nodeclass": node_class["metadata"]["name"],
                      "karpenter.sh/capacity-type": req["karpenter.sh/capacity-type"][0],
                      "karpenter.sh/registered": "true", "karpenter.sh/initialized": "true",
                      **pool["spec"]["template"]["metadata"]["labels"]}
            shape = NodeShape(name=name, pool=pool["metadata"]["name"], labels=labels,
                              taints=[dict(t) for t in spec.get("taints") or []],
                              cpu=f"{cores * 1000 - _cpu_reserved_m(cores)}m",
                              memory=f"{mem - (11 * max_pods + 255) - 100}Mi", pods=max_pods)
            # Bottlerocket runs NVIDIA's plugin itself; on AL2023 a plugin pod must come first.
            (shape.devices if family == "bottlerocket" else shape.devices_from_plugin)["nvidia.com/gpu"] = gpus
            shapes.append(shape)
    return shapes


def gke(rec: Recording) -> list[NodeShape]:
    shapes = []
    for pool in rec.of_type("gcp:container/nodePool:NodePool"):
        p = reveal(pool.inputs)
        cfg = p["nodeConfig"]
        machine = cfg["machineType"]
        cores, mem, max_pods = _machine(machine)
        location = p["location"]
        zones = p.get("nodeLocations") or (
            [location] if location[-2] == "-" else [f"{location}-{z}" for z in GKE_DEFAULT_ZONES])
        labels = {"cloud.google.com/gke-nodepool": p["name"],
                  "cloud.google.com/machine-family": machine.split("-")[0],
                  "cloud.google.com/gke-os-distribution": "cos", **(cfg.get("labels") or {})}
        taints, devices = [], {}
        if machine in GKE_TPU_MACHINES:
            # GKE labels and taints TPU nodes and runs their device plugin itself; a multi-host
            # slice's nodes carry the slice's topology.
            accelerator, topology, chips = GKE_TPU_MACHINES[machine]
            labels["cloud.google.com/gke-tpu-accelerator"] = accelerator
            labels["cloud.google.com/gke-tpu-topology"] = (p.get("placementPolicy") or {}).get("tpuTopology") or topology
            taints.append(dict(GKE_TPU_TAINT))
            devices["google.com/tpu"] = chips
        for acc in cfg.get("guestAccelerators") or []:
            # The type asked for is the label; the GPUs are the machine's.
            labels["cloud.google.com/gke-accelerator"] = acc["type"]
            taints.append(dict(GKE_GPU_TAINT))
            devices["nvidia.com/gpu"] = GKE_G2_GPUS[machine]
        # An autoscaled pool: GKE's autoscaler adds nodes on demand up to maxNodeCount per zone,
        # or totalMaxNodeCount over the pool's zones.
        scaling = p["autoscaling"]
        total = scaling.get("totalMaxNodeCount")
        for z, zone in enumerate(zones):
            count = int(scaling["maxNodeCount"]) if total is None else len(range(z, int(total), len(zones)))
            for i in range(count):
                name = f"gke-{p['name']}-{zone[-1]}{i}"
                shapes.append(NodeShape(
                    name=name, pool=p["name"], labels={**_base_labels(name, "amd64", machine, zone), **labels},
                    taints=list(taints), cpu=f"{cores * 1000 - _cpu_reserved_m(cores)}m",
                    memory=f"{mem - _gke_memory_reserved_mi(mem)}Mi", pods=max_pods, devices=dict(devices)))
    return shapes


def minikube(rec: Recording, plugin_device_arg: Optional[str]) -> list[NodeShape]:
    start = next(reveal(r.inputs)["create"] for r in rec.of_type("command:local:Command")
                 if "minikube start" in reveal(r.inputs).get("create", ""))
    argv = shlex.split(start.split("|| ", 1)[1].rstrip(")"))
    opt = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    name = opt["--profile"]
    mem = opt["--memory"]
    mem_mi = int(mem[:-1]) * 1024 if mem.endswith("g") else int(mem.rstrip("mb"))
    devices = {}
    if plugin_device_arg:
        # squat's generic-device-plugin advertises `count` units per group of its --device spec.
        spec = yaml.safe_load(plugin_device_arg)
        devices[f"squat.ai/{spec['name']}"] = sum(g.get("count", 1) for g in spec["groups"])
    return [NodeShape(
        name=name, pool="minikube",
        # A single minikube node is its control plane too, without the control-plane taint.
        labels={**_base_labels(name, "arm64", None, None), "minikube.k8s.io/name": name,
                 "minikube.k8s.io/primary": "true", "node-role.kubernetes.io/control-plane": ""},
        taints=[], cpu=opt["--cpus"], memory=f"{mem_mi}Mi", pods=110, devices_from_plugin=devices)]


# Objects the cloud or minikube put on every cluster that the render refers to.
CLOUD_OBJECTS = {
    "local": [{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "standard", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
               "provisioner": "k8s.io/minikube-hostpath", "volumeBindingMode": "Immediate"}],
    "eks": [],
    "gke": [{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
             "metadata": {"name": "standard-rwo", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
             "provisioner": "pd.csi.storage.gke.io", "parameters": {"type": "pd-balanced"},
             "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True}],
}
