"""EKS in its own VPC: a system node group, tainted NVIDIA GPU nodes (Karpenter's, or a node group), EBS CSI with an
encrypted gp3 default StorageClass, and a kubeconfig that authenticates with `aws eks get-token`."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from typing import Mapping

import pulumi
import pulumi_aws as aws

from components.cluster import karpenter
from components.cluster.base import BuiltCluster, CacheClass, IngressFacts
from components.config import EksCluster
from components.core.hardware import NVIDIA_GPU_PRESENT_LABEL

STORAGE_CLASS = "gp3"
# The GPU nodes' pool: the managed node group's name, or Karpenter's NodePool's.
GPU_POOL = "gpu"
CACHE_CLASS = "model-cache"
# gp3 without parameters gives 125 MiB/s and 3000 IOPS, so a 140 GiB model takes ~20 minutes
# just to read. 500 MiB/s, with the IOPS to carry it in 128 KiB reads, cuts that to ~5; the GPU
# instance's own EBS bandwidth caps it too. gp3 allows 500 IOPS per GiB: 4000 needs 8 GiB.
CACHE_THROUGHPUT_MIB_S = 500
CACHE_IOPS = 4000
# Through the in-tree service controller: no extra controller or IAM policy is needed. It makes
# an internet-facing NLB in the public subnets unless `...-internal` is set (anything but
# "false"), then an internal one in the subnets tagged kubernetes.io/role/internal-elb.
NLB_ANNOTATIONS = {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"}
NLB_INTERNAL_ANNOTATIONS = {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}
_EKS_EFFECT = {"NoSchedule": "NO_SCHEDULE", "NoExecute": "NO_EXECUTE", "PreferNoSchedule": "PREFER_NO_SCHEDULE"}
_MANAGED = "arn:aws:iam::aws:policy/"
# The VPC CNI enforces NetworkPolicies only with its network policy agent switched on.
VPC_CNI_CONFIGURATION = {"enableNetworkPolicy": "true"}
# The ingress keeps two replicas through node drains.
INGRESS_REPLICAS = 2


def node_group_taint(taint: dict) -> dict:
    """The EKS API's spelling of a Kubernetes taint."""
    return {"key": taint["key"], "value": taint["value"], "effect": _EKS_EFFECT[taint["effect"]]}


def _role(name: str, service: str, policies: list[str], opts: pulumi.ResourceOptions,
          actions: tuple[str, ...] = ("sts:AssumeRole",)) -> aws.iam.Role:
    role = aws.iam.Role(
        name,
        assume_role_policy=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": list(actions)}],
        }),
        opts=opts,
    )
    for policy in policies:
        aws.iam.RolePolicyAttachment(
            f"{name}-{policy.rsplit('/', 1)[1]}", role=role.name, policy_arn=policy, opts=opts
        )
    return role


def kubeconfig(name: pulumi.Input[str], endpoint: pulumi.Input[str], ca: pulumi.Input[str], region: str):
    def render(args):
        cluster_name, server, ca_data = args
        return json.dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": cluster_name, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
            "current-context": cluster_name,
            # Exec auth: no token in the text, so the provider is not replaced on every `up`.
            "users": [{"name": cluster_name, "user": {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "aws",
                "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region],
            }}}],
        })

    return pulumi.Output.all(name, endpoint, ca).apply(render)


def build(parent: pulumi.Resource, name: str, cfg: EksCluster,
          pod_identities: Mapping[tuple[str, str], str]) -> BuiltCluster:
    provider = aws.Provider(f"{name}-aws", region=cfg.region, opts=pulumi.ResourceOptions(parent=parent))
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    tags = {"llm-platform/cluster": cfg.name}

    # --- network: public subnets for load balancers, private ones for nodes -------------
    vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=cfg.vpc_cidr, enable_dns_hostnames=True,
                      enable_dns_support=True, tags={**tags, "Name": cfg.name}, opts=opts)
    igw = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=tags, opts=opts)
    blocks = list(ipaddress.ip_network(cfg.vpc_cidr).subnets(new_prefix=20))
    public_rt = aws.ec2.RouteTable(f"{name}-public", vpc_id=vpc.id, tags=tags,
                                   routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}], opts=opts)
    public, private = [], []
    for i, zone in enumerate(cfg.availability_zones):
        public.append(aws.ec2.Subnet(
            f"{name}-public-{zone}", vpc_id=vpc.id, availability_zone=zone, cidr_block=str(blocks[i]),
            map_public_ip_on_launch=True, tags={**tags, "kubernetes.io/role/elb": "1"}, opts=opts))
        aws.ec2.RouteTableAssociation(f"{name}-public-{zone}", subnet_id=public[-1].id,
                                      route_table_id=public_rt.id, opts=opts)
    # One NAT gateway keeps cost down; nodes reach registries and Hugging Face through it.
    eip = aws.ec2.Eip(f"{name}-nat", domain="vpc", tags=tags, opts=opts)
    nat = aws.ec2.NatGateway(f"{name}-nat", allocation_id=eip.id, subnet_id=public[0].id, tags=tags, opts=opts)
    private_rt = aws.ec2.RouteTable(f"{name}-private", vpc_id=vpc.id, tags=tags,
                                    routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat.id}], opts=opts)
    for i, zone in enumerate(cfg.availability_zones):
        private.append(aws.ec2.Subnet(
            f"{name}-private-{zone}", vpc_id=vpc.id, availability_zone=zone,
            cidr_block=str(blocks[len(cfg.availability_zones) + i]),
            tags={**tags, "kubernetes.io/role/internal-elb": "1"}, opts=opts))
        aws.ec2.RouteTableAssociation(f"{name}-private-{zone}", subnet_id=private[-1].id,
                                      route_table_id=private_rt.id, opts=opts)

    # --- control plane, with the deploying identity as cluster admin ----------------------
    cluster_role = _role(f"{name}-control-plane", "eks.amazonaws.com", [_MANAGED + "AmazonEKSClusterPolicy"], opts)
    cluster = aws.eks.Cluster(
        f"{name}-eks",
        name=cfg.name,
        version=cfg.kubernetes_version,
        role_arn=cluster_role.arn,
        vpc_config={"subnet_ids": [s.id for s in private + public], "endpoint_public_access": True},
        access_config={"authentication_mode": "API", "bootstrap_cluster_creator_admin_permissions": False},
        tags=tags,
        opts=opts,
    )
    def cluster_admin(logical: str, principal: pulumi.Input[str]) -> aws.eks.AccessPolicyAssociation:
        entry = aws.eks.AccessEntry(logical, cluster_name=cluster.name, principal_arn=principal, opts=opts)
        return aws.eks.AccessPolicyAssociation(
            f"{logical}-admin", cluster_name=cluster.name, principal_arn=entry.principal_arn,
            policy_arn="arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy",
            access_scope={"type": "cluster"}, opts=opts)

    if cfg.admin_roles:
        # The roles the config names, whoever runs the program (CI, a laptop, the operator's
        # workspace): no run takes another's access away.
        admin_policies = [cluster_admin(f"{name}-admin-{role.rsplit('/', 1)[-1]}", role) for role in cfg.admin_roles]
    else:
        caller = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(provider=provider))
        # An assumed-role session ARN is not a principal EKS accepts: use the role behind it.
        principal = aws.iam.get_session_context_output(
            arn=caller.arn, opts=pulumi.InvokeOutputOptions(provider=provider)
        ).issuer_arn
        admin_policies = [cluster_admin(f"{name}-deployer", principal)]

    # --- nodes --------------------------------------------------------------------------
    node_role = _role(f"{name}-nodes", "ec2.amazonaws.com", [
        _MANAGED + "AmazonEKSWorkerNodePolicy", _MANAGED + "AmazonEKS_CNI_Policy",
        _MANAGED + "AmazonEC2ContainerRegistryReadOnly"], opts)

    def node_group(logical: str, group, ami_type: str, subnets=private, **extra) -> aws.eks.NodeGroup:
        return aws.eks.NodeGroup(
            f"{name}-{logical}",
            cluster_name=cluster.name,
            node_group_name=logical,
            node_role_arn=node_role.arn,
            subnet_ids=[s.id for s in subnets],
            ami_type=ami_type,
            instance_types=[group.instance_type],
            disk_size=group.disk_size_gb,
            scaling_config={"min_size": group.min_size, "desired_size": group.desired_size,
                            "max_size": group.max_size},
            tags=tags,
            opts=opts,
            **extra,
        )

    system = node_group("system", cfg.system_nodes, "AL2023_x86_64_STANDARD", labels={"llm-platform/pool": "system"})
    # EKS Pod Identity: the EBS CSI driver's and Karpenter's AWS credentials come through it.
    agent = aws.eks.Addon(f"{name}-pod-identity", cluster_name=cluster.name, addon_name="eks-pod-identity-agent",
                          opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[system])))
    gpu = cfg.accelerator_pool("nvidia")
    assert gpu.taint is not None  # EKS GPU nodes always carry EKS_GPU_TAINT
    # One zone: a model cache (an EBS volume) can only attach to a node in its own zone.
    gpu_subnet = private[cfg.availability_zones.index(cfg.gpu_zone)]
    # The device plugin's affinity needs NVIDIA_GPU_PRESENT_LABEL; the model pods select gpu.labels.
    gpu_labels = {"llm-platform/pool": GPU_POOL, **gpu.labels, **NVIDIA_GPU_PRESENT_LABEL}
    node_autoscaler = None
    if cfg.karpenter:
        # GPU nodes follow pending model pods (see components/node_autoscaler.py).
        node_autoscaler = karpenter.build(name, cfg, cluster, gpu_subnet, gpu, gpu_labels, tags, opts, provider)
        # Its controller runs on the system nodes, with credentials from the Pod Identity agent.
        node_autoscaler = dataclasses.replace(node_autoscaler, ready=[*node_autoscaler.ready, system, agent])
    else:
        node_group(
            GPU_POOL, cfg.gpu_nodes, cfg.gpu_nodes.ami_type,
            subnets=[gpu_subnet],
            labels=gpu_labels,
            # Only pods that tolerate this (the model servers, the device plugin) land on GPUs.
            taints=[node_group_taint(gpu.taint)],
        )

    # --- network policy enforcement ----------------------------------------------------
    # The managed add-on takes over the VPC CNI EKS installs itself (hence OVERWRITE).
    aws.eks.Addon(f"{name}-vpc-cni", cluster_name=cluster.name, addon_name="vpc-cni",
                  configuration_values=json.dumps(VPC_CNI_CONFIGURATION),
                  resolve_conflicts_on_create="OVERWRITE", resolve_conflicts_on_update="OVERWRITE", opts=opts)

    # --- EBS CSI through EKS Pod Identity ------------------------------------------------
    ebs_role = _role(f"{name}-ebs-csi", "pods.eks.amazonaws.com", [_MANAGED + "service-role/AmazonEBSCSIDriverPolicy"],
                     opts, actions=("sts:AssumeRole", "sts:TagSession"))
    ebs = aws.eks.Addon(
        f"{name}-ebs-csi", cluster_name=cluster.name, addon_name="aws-ebs-csi-driver",
        pod_identity_associations=[{"role_arn": ebs_role.arn, "service_account": "ebs-csi-controller-sa"}],
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[agent])),
    )

    # Service accounts that act as an IAM role (the operator's workspace); the pods get its
    # credentials from the Pod Identity agent.
    for (namespace, account), role in sorted(pod_identities.items()):
        aws.eks.PodIdentityAssociation(f"{name}-identity-{namespace}-{account}", cluster_name=cluster.name,
                                       namespace=namespace, service_account=account, role_arn=role,
                                       opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[agent])))

    # The provider must not be used before the deployer may act on the cluster: the name it
    # reads only resolves once the admin policy is associated.
    name_once_admin = pulumi.Output.all(*(p.id for p in admin_policies), cluster.name).apply(lambda a: a[-1])
    return BuiltCluster(
        replicated=True,
        kubeconfig=kubeconfig(name_once_admin, cluster.endpoint, cluster.certificate_authority.data, cfg.region),
        ingress=IngressFacts(service_type="LoadBalancer", address=None, annotations=dict(NLB_ANNOTATIONS),
                             internal_annotations=dict(NLB_INTERNAL_ANNOTATIONS), min_replicas=INGRESS_REPLICAS),
        network_policy_enforced=True,
        # Nodes, pods (VPC addresses) and the control plane's ENIs; the Service range is private.
        internal_cidrs=[cfg.vpc_cidr],
        host_models_dir=None,
        storage_class=STORAGE_CLASS,
        storage_class_manifest={
            "provisioner": "ebs.csi.aws.com",
            "parameters": {"type": "gp3", "encrypted": "true"},
            "volume_binding_mode": "WaitForFirstConsumer",
            "allow_volume_expansion": True,
            "reclaim_policy": "Delete",
        },
        storage_ready=[ebs],
        cache_class=cache_class(cfg),
        node_autoscaler=node_autoscaler,
    )


def cache_class(cfg: EksCluster) -> CacheClass:
    """Encrypted gp3 with throughput for loading weights, only in the GPU nodes' zone; tagged
    with the cluster so a volume left behind by an interrupted destroy can be found."""
    return CacheClass(
        name=CACHE_CLASS,
        manifest={
            "provisioner": "ebs.csi.aws.com",
            "parameters": {
                "type": "gp3", "encrypted": "true",
                "throughput": str(CACHE_THROUGHPUT_MIB_S), "iops": str(CACHE_IOPS),
                "tagSpecification_1": f"llm-platform/cluster={cfg.name}",
            },
            "volume_binding_mode": "WaitForFirstConsumer",
            "allow_volume_expansion": True,
            "reclaim_policy": "Delete",
            # The driver reports and reads the well-known zone key as well as its own.
            "allowed_topologies": [{"matchLabelExpressions": [
                {"key": "topology.kubernetes.io/zone", "values": [cfg.gpu_zone]}]}],
        },
        throughput_mib_s=CACHE_THROUGHPUT_MIB_S,
    )
