"""What an operator checks on `pulumi up -s eks` / `-s gke`, asserted on the recorded program."""

import fnmatch
import json
import math

import kubernetes_validate
import pytest

from tools import mock_engine as harness
from tests.program.test_schemas import core_objects, manifest

STATEFULSET = "kubernetes:apps/v1:StatefulSet"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"
RELEASE = "kubernetes:helm.sh/v3:Release"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"


@pytest.fixture(scope="module")
def eks():
    return harness.run("eks")


@pytest.fixture(scope="module")
def gke():
    return harness.run("gke")


@pytest.fixture(scope="module")
def local_rec():
    return harness.run("local")


def server(rec, alias="qwen"):
    return rec.one(STATEFULSET, f"model-{alias}-statefulset").inputs


def pod(rec, alias="qwen"):
    return server(rec, alias)["spec"]["template"]["spec"]


def flag(args, name):
    return args[args.index(name) + 1]


# --- eks ---------------------------------------------------------------------------------

def custom(rec, kind: str) -> dict:
    (obj,) = [r.inputs for r in rec.registrations if r.type.startswith("kubernetes:") and r.inputs.get("kind") == kind]
    return harness.reveal(obj)


NODE_GROUP_ONLY = {"autoscaler": "none", "minSize": 0, "desiredSize": 1, "maxSize": 2}


def eks_gpu_nodes(**keys):
    cluster = harness.stack_config("eks")["llm-platform:cluster"]
    nodes = {k: v for k, v in {**cluster["gpuNodes"], **keys}.items() if v is not None}
    return {"llm-platform:cluster": {**cluster, "gpuNodes": nodes}}


def test_eks_gpu_nodes_come_from_karpenter(eks):
    """No GPU node exists until a model pod is pending; Karpenter's pool makes nodes the model
    pods (toleration, selector) and the device plugin (label) land on, in the caches' zone."""
    assert [r.inputs["nodeGroupName"] for r in eks.of_type("aws:eks/nodeGroup:NodeGroup")] == ["system"]
    pool = custom(eks, "NodePool")["spec"]
    template = pool["template"]
    assert template["spec"]["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]
    assert template["metadata"]["labels"]["llm-platform/accelerator"] == "nvidia"
    assert template["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    req = {r["key"]: r["values"] for r in template["spec"]["requirements"]}
    assert req["node.kubernetes.io/instance-type"] == ["g6.xlarge"]
    assert req["topology.kubernetes.io/zone"] == ["us-west-2a"]
    assert pool["limits"] == {"nvidia.com/gpu": "2"}  # maxSize 2 × 1 GPU
    assert pool["disruption"]["consolidationPolicy"] == "WhenEmpty"
    node_class = custom(eks, "EC2NodeClass")["spec"]
    assert node_class["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
    assert template["spec"]["nodeClassRef"]["name"] == custom(eks, "EC2NodeClass")["metadata"]["name"]
    profile = eks.one("aws:iam/instanceProfile:InstanceProfile").inputs
    assert node_class["instanceProfile"] == profile["name"]
    # The nodes' role may join the cluster; the controller's identity is its service account's.
    entries = [r.inputs for r in eks.of_type("aws:eks/accessEntry:AccessEntry") if r.inputs.get("type") == "EC2_LINUX"]
    assert len(entries) == 1
    identity = eks.one("aws:eks/podIdentityAssociation:PodIdentityAssociation").inputs
    release = harness.reveal(eks.one(RELEASE, "cluster-gpu-nodes-karpenter").inputs)
    assert (identity["namespace"], identity["serviceAccount"]) == (release["namespace"],
                                                                   release["values"]["serviceAccount"]["name"])
    # Installed once it can run (system nodes) and act (its identity).
    waits_for = eks.depends_transitively(eks.one(RELEASE, "cluster-gpu-nodes-karpenter"))
    for needed in ("cluster-system", "cluster-karpenter-controller", "cluster-karpenter-nodes"):
        assert {r.urn for r in eks.registrations if r.name == needed} & set(waits_for), needed
    queue = eks.one("aws:sqs/queue:Queue").inputs
    assert release["values"]["settings"] == {"clusterName": "llm-platform", "interruptionQueue": queue["name"]}
    assert release["skipCrds"] and harness.reveal(eks.one(RELEASE, "cluster-gpu-nodes-crds").inputs)["chart"].endswith(
        "/karpenter-crd")
    # The node class finds only the GPU zone's subnet and the cluster's security group.
    tags = [r.inputs for r in eks.of_type("aws:ec2/tag:Tag")]
    assert len(tags) == 2  # the subnet's, and the security group's (its id is known only after `up`)
    subnets = [t for t in tags if t.get("resourceId", "").startswith("cluster-private-")]
    assert [t["resourceId"] for t in subnets] == ["cluster-private-us-west-2a-id"]
    assert {(t["key"], t["value"]) for t in tags} == set(node_class["subnetSelectorTerms"][0]["tags"].items())
    assert node_class["securityGroupSelectorTerms"] == node_class["subnetSelectorTerms"]


def karpenter_may_disrupt(pool: dict, reason: str, nodes: int) -> int:
    """Nodes Karpenter may disrupt at once for `reason` (karpenter.sh/v1 NodePool
    GetAllowedDisruptionsByReason: the least of the budgets that name the reason or name none)."""
    allowed = []
    for budget in pool["disruption"]["budgets"]:
        assert "schedule" not in budget  # always active
        if not budget.get("reasons") or reason in budget["reasons"]:
            n = budget["nodes"]
            allowed.append(math.ceil(nodes * int(n[:-1]) / 100) if n.endswith("%") else int(n))
    return min(allowed, default=math.ceil(nodes * 0.1))  # Karpenter's default budget: 10%


def test_eks_gpu_node_still_serving_is_never_replaced_by_choice(eks):
    """A new AMI release (`al2023@latest` resolves to it) or a changed NodePool or EC2NodeClass
    drifts every GPU node, and drift replaces a node however busy: its budget is zero. Only an
    empty node goes (one at a time), and every node at its expiry."""
    pool = custom(eks, "NodePool")["spec"]
    assert karpenter_may_disrupt(pool, "Drifted", nodes=2) == 0
    assert karpenter_may_disrupt(pool, "Empty", nodes=2) == 1
    assert pool["disruption"]["consolidationPolicy"] == "WhenEmpty"  # never "Underutilized"
    assert pool["template"]["spec"]["expireAfter"] == "720h"  # forceful: no budget holds it


def iam_allows(policy: dict, action: str, resource: str) -> bool:
    """Whether a statement of `policy` allows `action` on `resource` and none denies it (IAM's
    wildcards; conditions aside: the calls below are made in the stack's region, on resources
    tagged as the statements ask)."""
    def names(stmt: dict, key: str, value: str) -> bool:
        patterns = stmt.get(key, [])
        return any(fnmatch.fnmatchcase(value, p) for p in ([patterns] if isinstance(patterns, str) else patterns))

    hits = [s["Effect"] for s in policy["Statement"] if names(s, "Action", action) and names(s, "Resource", resource)]
    return "Allow" in hits and "Deny" not in hits


def karpenter_controller_policy(rec) -> dict:
    return json.loads(rec.one("aws:iam/rolePolicy:RolePolicy", "cluster-karpenter-controller").inputs["policy"])


# Calls Karpenter v1.14.1 makes beyond launching and terminating (pkg/controllers/nodeclass
# controller.go finalize: instance profiles it manages, then its launch templates; the instance
# status poller; the placement group provider), with the resource each names.
KARPENTER_CALLS = [
    ("iam:ListInstanceProfiles", "arn:aws:iam::123456789012:instance-profile/karpenter/us-west-2/llm-platform/*"),
    ("iam:GetInstanceProfile", "arn:aws:iam::123456789012:instance-profile/llm-platform-karpenter-gpu-nodes"),
    ("ec2:DescribeLaunchTemplates", "*"),
    ("ec2:DescribeInstanceStatus", "*"),
    ("ec2:DescribePlacementGroups", "*"),
]


@pytest.mark.parametrize("action, resource", KARPENTER_CALLS)
def test_karpenter_may_make_the_calls_it_makes(eks, action, resource):
    """Without iam:ListInstanceProfiles the EC2NodeClass's finalizer fails on every try, and
    `pulumi destroy` waits on it until it times out."""
    assert iam_allows(karpenter_controller_policy(eks), action, resource)


def test_karpenter_outlives_its_node_class_on_destroy(eks):
    """Pulumi deletes what depends on a resource before it: the EC2NodeClass (whose finalizer the
    controller runs) goes while the controller still runs, and the controller goes before the
    permissions it runs with."""
    node_class = next(r for r in eks.registrations if r.inputs.get("kind") == "EC2NodeClass")
    controller = eks.one(RELEASE, "cluster-gpu-nodes-karpenter")
    assert controller.urn in eks.depends_transitively(node_class)
    policy = eks.one("aws:iam/rolePolicy:RolePolicy", "cluster-karpenter-controller")
    assert policy.urn in eks.depends_transitively(controller)


def test_karpenter_interruption_queue_refuses_plain_http(eks):
    """As upstream's CloudFormation: every SQS call on the queue without TLS is denied, whoever
    makes it."""
    queue = eks.one("aws:sqs/queue:Queue")
    policy = json.loads(eks.one("aws:sqs/queuePolicy:QueuePolicy").inputs["policy"])
    arn = f"arn:aws:sqs::123456789012:{queue.name}"
    denies = [s for s in policy["Statement"] if s["Effect"] == "Deny" and s.get("Principal") == "*"
              and s.get("Condition") == {"Bool": {"aws:SecureTransport": "false"}}]
    assert any(all(iam_allows({"Statement": [{**s, "Effect": "Allow"}]}, action, arn)
                   for action in ("sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:PurgeQueue"))
               for s in denies), policy
    assert all(s["Resource"] == arn for s in policy["Statement"])


def test_eks_gpu_node_group_without_autoscaler():
    rec = harness.run("eks", eks_gpu_nodes(**NODE_GROUP_ONLY))
    gpu = rec.one("aws:eks/nodeGroup:NodeGroup", "cluster-gpu").inputs
    assert gpu["amiType"] == "AL2023_x86_64_NVIDIA"
    assert gpu["instanceTypes"] == ["g6.xlarge"]
    assert gpu["scalingConfig"] == {"minSize": 0, "desiredSize": 1, "maxSize": 2}
    assert gpu["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert gpu["labels"]["llm-platform/accelerator"] == "nvidia"
    system = rec.one("aws:eks/nodeGroup:NodeGroup", "cluster-system").inputs
    assert "taints" not in system
    assert not [r for r in rec.registrations if r.inputs.get("kind") in ("NodePool", "EC2NodeClass")]


@pytest.mark.parametrize("autoscaler", [{}, NODE_GROUP_ONLY])
def test_eks_bottlerocket_gpu_nodes_are_refused_in_one_line(autoscaler):
    """Bottlerocket's NVIDIA variants run their own device plugin, which the chart's would run
    beside (both register nvidia.com/gpu with the kubelet), and hand unprivileged containers no GPU
    through NVIDIA_VISIBLE_DEVICES, the DCGM exporter's way to see every GPU of its node."""
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", eks_gpu_nodes(amiType="BOTTLEROCKET_x86_64_NVIDIA", **autoscaler))
    message = str(info.value.error)
    assert message.startswith("Pulumi.eks.yaml: llm-platform:cluster.gpuNodes.amiType: ")
    assert "AL2023_x86_64_NVIDIA" in message and "\n" not in message
    assert info.value.registrations == []


@pytest.mark.parametrize("keys, message", [
    ({"desiredSize": 1}, "cluster.gpuNodes.desiredSize: not used with autoscaler 'karpenter'"),
    ({"extraInstanceTypes": ["g6.12xlarge"]}, "cluster.gpuNodes.extraInstanceTypes: expected types with 1 GPU(s)"),
    ({**NODE_GROUP_ONLY, "extraInstanceTypes": ["g5.xlarge"]}, "cluster.gpuNodes.extraInstanceTypes: only Karpenter"),
])
def test_eks_gpu_node_keys_that_do_not_fit_the_autoscaler_are_refused(keys, message):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", eks_gpu_nodes(**keys))
    assert str(info.value.error).startswith(f"Pulumi.eks.yaml: llm-platform:{message}")


def test_eks_network_spans_two_zones_tagged_for_load_balancers(eks):
    subnets = [r.inputs for r in eks.of_type("aws:ec2/subnet:Subnet")]
    public = [s for s in subnets if s["tags"].get("kubernetes.io/role/elb") == "1"]
    private = [s for s in subnets if s["tags"].get("kubernetes.io/role/internal-elb") == "1"]
    assert {s["availabilityZone"] for s in public} == {s["availabilityZone"] for s in private} == {
        "us-west-2a", "us-west-2b"}
    cidrs = [s["cidrBlock"] for s in subnets]
    assert len(set(cidrs)) == len(cidrs) == 4


def test_eks_deployer_is_cluster_admin(eks):
    entry = eks.one("aws:eks/accessEntry:AccessEntry", "cluster-deployer").inputs
    assert entry["principalArn"] == harness.DEPLOYER_ROLE
    policy = eks.one("aws:eks/accessPolicyAssociation:AccessPolicyAssociation").inputs
    assert policy["policyArn"].endswith("AmazonEKSClusterAdminPolicy")
    assert eks.one("aws:eks/cluster:Cluster").inputs["version"] == "1.33"


def test_eks_device_plugin_tolerates_the_gpu_taint_and_stays_on_gpu_nodes(eks):
    values = eks.one(RELEASE, "gpu-nvidia").inputs["values"]
    template = custom(eks, "NodePool")["spec"]["template"]
    (taint,) = template["spec"]["taints"]
    assert {"key": taint["key"], "operator": "Equal", "value": taint["value"], "effect": "NoSchedule"} in values["tolerations"]
    assert values["nodeSelector"].items() <= template["metadata"]["labels"].items()
    assert eks.one(RELEASE, "gpu-nvidia").inputs["version"] == "0.20.0"


def test_eks_model_pod_asks_for_gpus_and_lands_on_gpu_nodes(eks):
    spec = pod(eks)
    c = spec["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert flag(c["args"], "--tensor-parallel-size") == "1"
    assert c["args"][0] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert flag(c["args"], "--served-model-name") == "qwen"
    assert c["image"].startswith("vllm/vllm-openai:v")
    labels = custom(eks, "NodePool")["spec"]["template"]["metadata"]["labels"]
    assert spec["nodeSelector"].items() <= labels.items()
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in spec["volumes"]


def test_eks_cache_claims_use_the_storage_class_that_exists(eks):
    classes = {r.inputs["metadata"]["name"]: r.inputs for r in eks.of_type(STORAGE_CLASS)}
    default = classes["gp3"]
    assert default["provisioner"] == "ebs.csi.aws.com" and default["parameters"] == {"type": "gp3", "encrypted": "true"}
    (template,) = server(eks)["spec"]["volumeClaimTemplates"]
    cache = classes[template["spec"]["storageClassName"]]
    assert cache["provisioner"] == "ebs.csi.aws.com" and cache["parameters"]["encrypted"] == "true"
    mount = next(m for m in pod(eks)["containers"][0]["volumeMounts"] if m["name"] == template["metadata"]["name"])
    env = {e["name"]: e.get("value") for e in pod(eks)["containers"][0]["env"]}
    assert env["HF_HOME"].startswith(mount["mountPath"] + "/")


def test_eks_ingress_is_an_nlb(eks):
    service = eks.one(RELEASE, "mesh-gateway").inputs["values"]["service"]
    assert service["type"] == "LoadBalancer"
    assert service["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"
    assert eks.outputs["apiBaseUrl"] == f"http://{harness.LB_HOSTNAME}/v1"


def test_eks_kubeconfig_is_a_secret_with_exec_auth(eks):
    assert "kubeconfig" in eks.secret_outputs
    config = json.loads(eks.outputs["kubeconfig"])
    exec_ = config["users"][0]["user"]["exec"]
    assert exec_["command"] == "aws" and exec_["args"][:2] == ["eks", "get-token"]
    assert "token" not in json.dumps(config["users"][0]["user"]).replace("get-token", "")


def test_hf_token_is_a_secret_delivered_through_a_kubernetes_secret():
    rec = harness.run("eks", {"llm-platform:hfToken": "hf_secretvalue"}, secrets=("llm-platform:hfToken",))
    secret = rec.one("kubernetes:core/v1:Secret", "model-qwen-hf-token")
    assert harness.is_secret(secret.inputs["stringData"])
    env = {e["name"]: e for e in pod(rec)["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == secret.inputs["metadata"]["name"]
    # The token appears in no input in plain form, anywhere.
    for r in rec.registrations:
        plain = json.dumps({k: v for k, v in r.inputs.items() if not harness.is_secret(v)}, default=str)
        if r is not secret:
            assert "hf_secretvalue" not in plain, r.name


def test_hf_token_in_plain_text_is_refused():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {"llm-platform:hfToken": "hf_plain"})
    assert "llm-platform:hfToken: expected a secret" in str(info.value.error)
    assert info.value.registrations == []


# --- gke ---------------------------------------------------------------------------------

def test_gke_tpu_pool(gke):
    pool = gke.one("gcp:container/nodePool:NodePool", "cluster-tpu").inputs
    assert pool["nodeConfig"]["machineType"] == "ct5lp-hightpu-4t"
    assert pool["nodeLocations"] == ["us-central1-a"]
    # Totals for the pool, from zero: GKE adds a host for a pending model pod, removes it empty.
    assert pool["autoscaling"] == {"totalMinNodeCount": 0, "totalMaxNodeCount": 1}
    assert "placementPolicy" not in pool  # single host: no topology or placement
    assert pool["nodeConfig"]["reservationAffinity"] == {"consumeReservationType": "NO_RESERVATION"}
    cluster = gke.one("gcp:container/cluster:Cluster").inputs
    assert cluster["workloadIdentityConfig"] == {"workloadPool": "my-llm-project.svc.id.goog"}
    assert cluster["releaseChannel"] == {"channel": "REGULAR"}


@pytest.mark.parametrize("location", ["us-central1", "us-central1-a"])
def test_gke_system_pool_size_is_the_pools_total_in_any_location(location):
    """On a regional cluster a pool without nodeLocations spans the region's zones, and
    min/max_node_count are per zone: 1..3 would run 3..9 nodes. Totals hold on any location."""
    cluster = harness.stack_config("gke")["llm-platform:cluster"]
    rec = harness.run("gke", {"llm-platform:cluster": {**cluster, "location": location,
                                                      "systemPool": {"minNodes": 1, "maxNodes": 3}}})
    pool = rec.one("gcp:container/nodePool:NodePool", "cluster-system").inputs
    assert pool["autoscaling"] == {"totalMinNodeCount": 1, "totalMaxNodeCount": 3}


def test_gke_model_pod_takes_every_chip_of_one_host(gke):
    spec = pod(gke)
    c = spec["containers"][0]
    assert c["resources"]["limits"]["google.com/tpu"] == c["resources"]["requests"]["google.com/tpu"] == "4"
    assert flag(c["args"], "--tensor-parallel-size") == "4"
    assert spec["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2",
    }
    assert spec["tolerations"] == [{"key": "google.com/tpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]
    env = {e["name"]: e.get("value") for e in c["env"]}
    # Compiled XLA graphs survive restarts on the cache volume.
    assert env["VLLM_XLA_CACHE_PATH"].startswith("/data/")


def test_gke_needs_no_device_plugin_and_says_so(gke):
    assert not gke.of_type("kubernetes:apps/v1:DaemonSet")
    assert not [r for r in gke.of_type(RELEASE) if r.name.startswith("gpu")]
    assert gke.outputs["apiBaseUrl"] == f"http://{harness.LB_IP}/v1"


def multi_host(**keys):
    return {"llm-platform:cluster": {
        **harness.stack_config("gke")["llm-platform:cluster"],
        "tpuPool": {"machineType": "ct6e-standard-4t", "zone": "us-central1-b", "topology": "4x4", **keys}}}


def test_gke_multi_host_slice_gets_compact_placement_and_scales_whole():
    """A 4x4 v6e slice is 4 hosts of 4 chips: the pool goes from zero to the whole slice."""
    rec = harness.run("gke", multi_host(maxNodes=4))
    pool = rec.one("gcp:container/nodePool:NodePool", "cluster-tpu").inputs
    assert pool["placementPolicy"] == {"type": "COMPACT", "tpuTopology": "4x4"}
    assert pool["autoscaling"] == {"totalMinNodeCount": 0, "totalMaxNodeCount": 4}


@pytest.mark.parametrize("counts", [{}, {"maxNodes": 8}, {"maxNodes": 4, "minNodes": 2}])
def test_gke_part_of_a_multi_host_slice_is_refused(counts):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("gke", multi_host(**counts))
    assert str(info.value.error).startswith(
        "Pulumi.gke.yaml: llm-platform:cluster.tpuPool.maxNodes: a 4x4 slice of ct6e-standard-4t is 4 hosts "
        "and scales as a whole: expected maxNodes 4 and minNodes 0 or 4")


# --- both --------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["eks", "gke"])
def test_vllm_runs_as_a_user_without_a_passwd_entry(stack, eks, gke):
    """torch asks getpass.getuser(), which fails for a uid missing from /etc/passwd unless
    LOGNAME or USER is set; HOME must be writable on the read-only root filesystem."""
    spec = pod({"eks": eks, "gke": gke}[stack])
    c = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert spec["securityContext"]["runAsUser"] == 10001 and c["securityContext"]["readOnlyRootFilesystem"]
    assert env["USER"] and env["LOGNAME"]
    home = next(m for m in c["volumeMounts"] if env["HOME"] == m["mountPath"] or env["HOME"].startswith(m["mountPath"] + "/"))
    assert not home.get("readOnly") and "emptyDir" in next(v for v in spec["volumes"] if v["name"] == home["name"])
    assert c["image"].endswith(":v0.29.0")  # a release that exists on both registries and masks keys in its log


@pytest.mark.parametrize("stack", ["eks", "gke"])
def test_same_platform_on_the_new_clusters_provider(stack, eks, gke):
    rec = {"eks": eks, "gke": gke}[stack]
    provider = rec.one("pulumi:providers:kubernetes")
    assert harness.is_secret(provider.inputs["kubeconfig"])
    for r in rec.registrations:
        if r.type.startswith("kubernetes:"):
            assert r.provider_urn == provider.urn, r.name
    for kind in ("mesh-base", "mesh-istiod", "mesh-gateway", "gitops-argocd"):
        rec.one(RELEASE, kind)
    rec.one("kubernetes:gateway.networking.k8s.io/v1:Gateway")
    rec.one("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute")
    rec.one("kubernetes:yaml/v2:ConfigGroup", "mesh-gateway-api-crds")
    rec.one("kubernetes:argoproj.io/v1alpha1:Application")


@pytest.mark.parametrize("stack", ["eks", "gke"])
def test_core_objects_validate_strictly(stack, eks, gke):
    rec = {"eks": eks, "gke": gke}[stack]
    objs = core_objects(rec)
    assert any(o.inputs["kind"] == "StatefulSet" for o in objs)
    for o in objs:
        kubernetes_validate.validate(manifest(o.inputs), "1.33", strict=True)


@pytest.mark.parametrize("stack, pool", [("eks", "cluster-gpu-nodes-node-pool"), ("gke", "cluster-tpu")])
def test_only_model_servers_wait_for_the_accelerator_pool(stack, pool, eks, gke):
    rec = {"eks": eks, "gke": gke}[stack]
    pool_urn = rec.named(pool).urn
    cluster_urn = next(r.urn for r in rec.registrations if r.type.endswith("/cluster:Cluster"))
    # The walk follows providers: everything on Kubernetes waits for the cluster itself...
    assert cluster_urn in rec.depends_transitively(rec.named("mesh-base"))
    # ...but nothing platform-wide waits for the accelerator nodes.
    for name in ("mesh-base", "mesh-gateway-api-crds", "mesh-istiod", "mesh-gateway", "gitops-argocd", "gateway-routes",
                 "gateway-gateway"):
        assert pool_urn not in rec.depends_transitively(rec.named(name)), name


@pytest.mark.parametrize("overrides, expected", [
    ({"llm-platform:models": [{"name": "big", "runtime": "vllm", "hfModel": "Qwen/Qwen2.5-7B-Instruct",
                               "accelerators": 4}]},
     "llm-platform:models[0].accelerators: 4 asked (tensor-parallel size) but a node has only 1"),
    ({"llm-platform:accelerator": {"kind": "tpu"}},
     "llm-platform:accelerator.kind: eks clusters serve on nvidia, got 'tpu'"),
])
def test_impossible_eks_combinations_refused(overrides, expected):
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", overrides)
    assert str(info.value.error) == f"Pulumi.eks.yaml: {expected}"
    assert info.value.registrations == []


@pytest.mark.parametrize("cluster_patch, expected", [
    ({"tpuPool": {"machineType": "ct9-mega-4t", "zone": "us-central1-a"}},
     "llm-platform:cluster.tpuPool.machineType: cannot derive the TPU accelerator"),
    ({"region": "uscentral"}, "llm-platform:cluster.region: String should match pattern"),
    ({"tpuPool": {"zone": "europe-west4-a"}},
     "llm-platform:cluster.tpuPool.zone: expected us-central1 or one of its zones"),
])
def test_impossible_gke_combinations_refused(cluster_patch, expected):
    cluster = {**harness.stack_config("gke")["llm-platform:cluster"], **cluster_patch}
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("gke", {"llm-platform:cluster": cluster})
    assert str(info.value.error).startswith(f"Pulumi.gke.yaml: {expected}")
    assert info.value.registrations == []


def test_gke_l4_gpu_pool_uses_gke_managed_drivers():
    base = harness.stack_config("gke")
    cluster = {k: v for k, v in base["llm-platform:cluster"].items() if k != "tpuPool"}
    model = {**base["llm-platform:models"][0], "accelerators": 2}
    rec = harness.run("gke", {
        "llm-platform:cluster": {**cluster, "gpuPool": {"machineType": "g2-standard-24", "zone": "us-central1-b"}},
        "llm-platform:accelerator": {"kind": "nvidia"},
        "llm-platform:models": [model],
    })
    pool = rec.one("gcp:container/nodePool:NodePool", "cluster-gpu").inputs["nodeConfig"]
    assert pool["guestAccelerators"] == [{
        "type": "nvidia-l4", "count": 2, "gpuDriverInstallationConfig": {"gpuDriverVersion": "LATEST"}}]
    assert not [r for r in rec.of_type(RELEASE) if r.name.startswith("gpu")]  # GKE runs the plugin
    spec = pod(rec)
    c = spec["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2" and flag(c["args"], "--tensor-parallel-size") == "2"
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}]


@pytest.mark.parametrize("patch, accelerator, expected", [
    ({"gpuPool": {"zone": "us-central1-b"}}, "tpu",
     "llm-platform:cluster.tpuPool: expected exactly one accelerator pool, tpuPool or gpuPool"),
    ({}, "nvidia", "llm-platform:cluster.gpuPool: required to serve on 'nvidia'"),
    ({"gpuPool": {"machineType": "n1-standard-8", "zone": "us-central1-b"}, "tpuPool": None}, "nvidia",
     "llm-platform:cluster.gpuPool.machineType: expected a G2 (NVIDIA L4) machine type"),
])
def test_gke_pool_and_accelerator_must_agree(patch, accelerator, expected):
    cluster = {k: v for k, v in {**harness.stack_config("gke")["llm-platform:cluster"], **patch}.items()
               if v is not None}
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("gke", {"llm-platform:cluster": cluster, "llm-platform:accelerator": {"kind": accelerator}})
    assert str(info.value.error).startswith(f"Pulumi.gke.yaml: {expected}")
    assert info.value.registrations == []


# --- the ingress survives a node drain on the cloud stacks ---------------------------------

@pytest.mark.parametrize("stack_name, replicas", [("local", 1), ("eks", 2), ("gke", 2)])
def test_ingress_replicas_spread_and_disruption_budget(stack_name, replicas):
    """The gateway chart's own templates, given the values the program passes: two or more
    replicas kept on eks/gke, spread over nodes, with a PodDisruptionBudget; one on a laptop."""
    from tests.program.test_security import render_chart

    rec = harness.run(stack_name)
    release = rec.one("kubernetes:helm.sh/v3:Release", "mesh-gateway").inputs
    docs = render_chart(f"{release['chart']}-{release['version']}.tgz", release["values"], release["name"],
                        release["namespace"])
    kinds = {d["kind"]: d for d in docs}
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] == replicas
    if replicas == 1:
        assert "PodDisruptionBudget" not in kinds
        return
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    pod = kinds["Deployment"]["spec"]["template"]
    spread = {c["topologyKey"]: c for c in pod["spec"]["topologySpreadConstraints"]}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert "topology.kubernetes.io/zone" in spread
    for c in spread.values():  # the constraint selects the gateway's own pods
        assert c["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


# --- the resource metrics API the CPU-based HPAs read --------------------------------------

def metrics_server_releases(rec) -> list:
    return [r.inputs for r in rec.of_type(RELEASE) if r.inputs["chart"] == "metrics-server"]


def test_metrics_server_is_installed_where_the_cluster_serves_no_resource_metrics(eks, gke, local_rec):
    """The ingress gateway's and istiod's HPAs scale on CPU, read from `metrics.k8s.io`. EKS runs
    no metrics-server: the chart is installed, pinned; GKE runs its own and minikube's addon is
    enabled with the cluster: a second one would collide with theirs. (On the control plane:
    tests/parts/test_cluster.py, the HPA's metric source on eks.)"""
    from components.cluster import metrics_server

    (release,) = metrics_server_releases(eks)
    assert (release["chart"], release["version"], release["namespace"]) == (
        "metrics-server", metrics_server.CHART_VERSION, "kube-system")
    assert release["repositoryOpts"]["repo"] == metrics_server.REPO
    assert not metrics_server_releases(gke) and not metrics_server_releases(local_rec)
    addon = local_rec.one("command:local:Command", "cluster-metrics-server").inputs
    assert addon["create"] == "minikube addons enable metrics-server --profile llm-platform"
    vm = local_rec.one("command:local:Command", "cluster-minikube")
    assert vm.urn in local_rec.one("command:local:Command", "cluster-metrics-server").dependencies


@pytest.mark.parametrize("setting, installed", [(None, False), ("install", True), ("present", False)])
def test_an_existing_cluster_says_whether_it_serves_resource_metrics(tmp_path, setting, installed):
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(harness.KUBECONFIG)
    cluster = {"kind": "existing", "kubeconfig": str(kubeconfig), **({"metricsServer": setting} if setting else {})}
    rec = harness.run("local", {"llm-platform:cluster": cluster, "llm-platform:accelerator": {"kind": "none"},
                                "llm-platform:llamaRouter": {"enabled": False}})
    assert bool(metrics_server_releases(rec)) is installed


# --- model caches: one per replica, in the accelerators' zone, fast enough for big models ---

def zone_of_subnet(rec, subnet_id: str) -> str:
    return next(r.inputs["availabilityZone"] for r in rec.of_type("aws:ec2/subnet:Subnet")
                if f"{r.name}-id" == subnet_id)


def cache_class(rec) -> dict:
    (template,) = server(rec)["spec"]["volumeClaimTemplates"]
    name = template["spec"]["storageClassName"]
    return next(r.inputs for r in rec.of_type(STORAGE_CLASS) if r.inputs["metadata"]["name"] == name)


def allowed_zones(storage_class: dict) -> set[str]:
    return {z for t in storage_class["allowedTopologies"] for e in t["matchLabelExpressions"] for z in e["values"]}


def karpenter_zones(rec) -> set[str]:
    reqs = custom(rec, "NodePool")["spec"]["template"]["spec"]["requirements"]
    return {z for r in reqs if r["key"] == "topology.kubernetes.io/zone" for z in r["values"]}


def test_eks_gpu_nodes_and_their_caches_share_one_zone(eks):
    zones = karpenter_zones(eks)
    assert zones == {"us-west-2a"}  # the first of availabilityZones unless gpuNodes.zone says
    sc = cache_class(eks)
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert allowed_zones(sc) == zones
    system = eks.one("aws:eks/nodeGroup:NodeGroup", "cluster-system").inputs
    assert {zone_of_subnet(eks, s) for s in system["subnetIds"]} == {"us-west-2a", "us-west-2b"}
    group = harness.run("eks", eks_gpu_nodes(**NODE_GROUP_ONLY))
    gpu = group.one("aws:eks/nodeGroup:NodeGroup", "cluster-gpu").inputs
    assert {zone_of_subnet(group, s) for s in gpu["subnetIds"]} == allowed_zones(cache_class(group)) == zones


def test_eks_gpu_zone_is_configurable_and_checked():
    rec = harness.run("eks", eks_gpu_nodes(zone="us-west-2b"))
    assert karpenter_zones(rec) == allowed_zones(cache_class(rec)) == {"us-west-2b"}
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", eks_gpu_nodes(zone="us-west-2c"))
    assert str(info.value.error).startswith(
        "Pulumi.eks.yaml: llm-platform:cluster.gpuNodes.zone: expected one of availabilityZones")


@pytest.mark.parametrize("machine, disk", [("ct5lp-hightpu-4t", "pd-balanced"), ("ct6e-standard-4t", "hyperdisk-balanced")])
def test_gke_cache_disk_attaches_to_the_tpu_machine_in_its_zone(machine, disk):
    cluster = harness.stack_config("gke")["llm-platform:cluster"]
    rec = harness.run("gke", {"llm-platform:cluster": {**cluster, "tpuPool": {**cluster["tpuPool"], "machineType": machine}}})
    sc = cache_class(rec)
    assert sc["provisioner"] == "pd.csi.storage.gke.io" and sc["parameters"]["type"] == disk
    # Made where the first pod is scheduled, and the pool has one zone.
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert len(rec.one("gcp:container/nodePool:NodePool", "cluster-tpu").inputs["nodeLocations"]) == 1
    if disk == "hyperdisk-balanced":  # provisioned, not the 140 MiB/s baseline
        assert int(sc["parameters"]["provisioned-throughput-on-create"].removesuffix("Mi")) >= 400


def test_every_replica_gets_its_own_cache_and_the_service_still_selects_them():
    model = harness.stack_config("eks")["llm-platform:models"][0]
    # Karpenter adds the second GPU node (maxSize 2) for the second replica.
    rec = harness.run("eks", {"llm-platform:models": [{**model, "replicas": 2}]})
    # No claim shared by replicas (the front door's Deployment holds none).
    assert [r.type for r in rec.model_servers()] == [STATEFULSET] and not rec.of_type(PVC)
    sts = server(rec)
    assert sts["spec"]["replicas"] == 2
    (template,) = sts["spec"]["volumeClaimTemplates"]
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert template["spec"]["resources"]["requests"]["storage"] == model["cacheSize"]
    # One pod at a time on its own claim: no second GPU or second copy of the weights needed.
    assert sts["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    service = rec.one("kubernetes:core/v1:Service", "model-qwen-service").inputs
    assert service["spec"]["selector"] == labels == sts["spec"]["selector"]["matchLabels"]
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    pdb = rec.one("kubernetes:policy/v1:PodDisruptionBudget", "model-qwen-pdb").inputs
    assert pdb["spec"]["selector"]["matchLabels"] == labels and pdb["spec"]["maxUnavailable"] == 1


def test_replicas_beyond_the_gpus_that_exist_are_refused():
    """One GPU node exists (desiredSize 1) and nothing scales the group: a second replica would
    stay Pending and `up` would wait for it until it times out."""
    model = harness.stack_config("eks")["llm-platform:models"][0]
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {**eks_gpu_nodes(**NODE_GROUP_ONLY), "llm-platform:models": [{**model, "replicas": 2}]})
    assert str(info.value.error).startswith(
        "Pulumi.eks.yaml: llm-platform:models[0].replicas: the models need 2 nvidia units in all, the cluster offers 1")
    assert info.value.registrations == []


def test_replicas_beyond_karpenters_limit_are_refused():
    """Karpenter adds GPU nodes up to maxSize (the NodePool's GPU limit), and no further."""
    model = harness.stack_config("eks")["llm-platform:models"][0]
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {"llm-platform:models": [{**model, "replicas": 3}]})
    assert str(info.value.error).startswith(
        "Pulumi.eks.yaml: llm-platform:models[0].replicas: the models need 3 nvidia units in all, the cluster offers 2 "
        "(1 per node × up to 2 nodes the autoscaler adds)")


def test_gke_pool_autoscaler_counts_as_capacity():
    """GKE scales a pool with `autoscaling` up to maxNodes for pending pods."""
    cluster = harness.stack_config("gke")["llm-platform:cluster"]
    model = harness.stack_config("gke")["llm-platform:models"][0]
    rec = harness.run("gke", {
        "llm-platform:cluster": {**cluster, "tpuPool": {**cluster["tpuPool"], "maxNodes": 2}},
        "llm-platform:models": [{**model, "replicas": 2}],
    })
    assert server(rec)["spec"]["replicas"] == 2


# --- big models -------------------------------------------------------------------------

GIB, MIB = 2**30, 2**20


def gib(quantity: str) -> float:
    assert quantity.endswith("Gi"), quantity
    return float(quantity[:-2])


def big_model(rec_stack: str, **keys) -> dict:
    model = harness.stack_config(rec_stack)["llm-platform:models"][0]
    return {k: v for k, v in {**model, **keys}.items() if v is not None}


def startup_budget_s(sts: dict) -> int:
    probe = sts["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    return probe["periodSeconds"] * probe["failureThreshold"]


@pytest.mark.parametrize("stack", ["eks", "gke"])
@pytest.mark.parametrize("weights", [140, 400])  # a 70B and a 200B model in bf16
def test_a_big_model_gets_a_cache_that_holds_it_and_time_to_load(stack, weights):
    rec = harness.run(stack, {"llm-platform:models": [big_model(stack, weightsSize=f"{weights}Gi", cacheSize=None)]})
    sts = server(rec)
    (template,) = sts["spec"]["volumeClaimTemplates"]
    assert gib(template["spec"]["resources"]["requests"]["storage"]) >= weights * 1.1
    budget_s = startup_budget_s(sts)
    # At least: download at a modest 50 MiB/s, then read back at what the cache class sustains.
    sc = cache_class(rec)
    params = sc["parameters"]
    throughput = int(params.get("throughput") or params.get("provisioned-throughput-on-create", "140Mi").removesuffix("Mi"))
    assert budget_s >= weights * GIB / (50 * MIB) + weights * GIB / (throughput * MIB)
    # Pulumi waits at least as long as the pods may take.
    timeouts = rec.one(STATEFULSET).custom_timeouts
    assert int(timeouts["create"].removesuffix("m")) * 60 > budget_s
    assert int(timeouts["update"].removesuffix("m")) * 60 > budget_s


def test_eks_cache_volumes_are_provisioned_for_throughput(eks):
    params = cache_class(eks)["parameters"]
    # gp3 gives 125 MiB/s and 3000 IOPS unless asked; ask within gp3's 0.25 MiB/s per IOPS.
    assert params["type"] == "gp3" and int(params["throughput"]) >= 400 and int(params["iops"]) >= 3000
    assert int(params["throughput"]) <= int(params["iops"]) / 4


@pytest.mark.parametrize("stack", ["eks", "gke"])
def test_small_default_model_keeps_its_cache_and_budget(stack):
    sts = server(harness.run(stack))
    (template,) = sts["spec"]["volumeClaimTemplates"]
    assert template["spec"]["resources"]["requests"]["storage"] == "50Gi"  # the stack file's cacheSize
    probe = sts["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] == {"eks": 60, "gke": 90}[stack] * 60


def test_a_cache_smaller_than_the_weights_is_refused():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {"llm-platform:models": [big_model("eks", weightsSize="140Gi", cacheSize="100Gi")]})
    assert str(info.value.error) == (
        "Pulumi.eks.yaml: llm-platform:models[0].cacheSize: 100Gi cannot hold the model's weights "
        "(weightsSize 140Gi); leave it out to size it from the weights")
    assert info.value.registrations == []


def test_a_cache_too_small_for_its_provisioned_iops_is_refused():
    with pytest.raises(harness.ProgramFailed) as info:
        harness.run("eks", {"llm-platform:models": [big_model("eks", cacheSize="5Gi")]})
    assert str(info.value.error) == "Pulumi.eks.yaml: llm-platform:models[0].cacheSize: expected at least 10Gi, got '5Gi'"
