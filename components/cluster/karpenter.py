"""The AWS side of Karpenter on EKS: the GPU nodes' role and instance profile, the controller's
role (EKS Pod Identity), the interruption queue and its EventBridge rules, and the discovery tags
on the GPU zone's subnet and the cluster security group. The Kubernetes side (chart, NodePool,
EC2NodeClass) is components/node_autoscaler.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from components.config import EksCluster
from components.core.hardware import AcceleratorPool

# The chart's service account and namespace; the Pod Identity association names both.
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"
DISCOVERY_TAG = "karpenter.sh/discovery"
# Karpenter's AMI alias family and root volume device of each AMI type the config admits.
AMI_FAMILY = {"AL2023_x86_64_NVIDIA": ("al2023", "/dev/xvda")}
_MANAGED = "arn:aws:iam::aws:policy/"
NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly",
                 "AmazonSSMManagedInstanceCore")
# What Karpenter's interruption handling listens for (its getting-started CloudFormation).
INTERRUPTION_EVENTS = {
    "health": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
}


@dataclass(frozen=True)
class KarpenterFacts:
    """What the NodePool and EC2NodeClass need from the AWS side."""

    cluster_name: pulumi.Input[str]
    interruption_queue: pulumi.Input[str]
    instance_profile: pulumi.Input[str]
    discovery: str
    zone: str
    instance_types: list[str]
    ami_alias: str
    block_device: str
    disk_size_gb: int
    # nvidia.com/gpu the pool may hold at once (maxSize nodes).
    gpu_limit: int
    labels: dict[str, str]
    taint: dict[str, str]
    consolidate_after: str
    tags: dict[str, str]
    # The controller can act only once its identity, its permissions and the nodes' access entry exist.
    ready: list = field(default_factory=list)


def controller_policy(cluster: str, region: str, account: str, node_role_arn: str, queue_arn: str) -> dict:
    """Launch, tag and terminate only instances tagged for this cluster; read what it chooses
    from; pass the nodes' role; read the interruption queue."""
    owned = {f"aws:RequestTag/kubernetes.io/cluster/{cluster}": "owned", "aws:RequestTag/eks:eks-cluster-name": cluster}
    ec2 = f"arn:aws:ec2:{region}"
    created = [f"{ec2}:*:{r}/*" for r in ("fleet", "instance", "volume", "network-interface", "launch-template",
                                         "spot-instances-request")]
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "LaunchFrom", "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": [f"{ec2}::image/*", f"{ec2}::snapshot/*", f"{ec2}:*:security-group/*", f"{ec2}:*:subnet/*",
                      f"{ec2}:*:capacity-reservation/*"]},
        {"Sid": "LaunchWithOwnTemplates", "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": [f"{ec2}:*:launch-template/*"],
         "Condition": {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"},
                       "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "CreateTagged", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"], "Resource": created,
         "Condition": {"StringEquals": owned, "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "TagOnCreate", "Effect": "Allow", "Action": ["ec2:CreateTags"], "Resource": created,
         "Condition": {"StringEquals": {**owned, "ec2:CreateAction": ["RunInstances", "CreateFleet",
                                                                       "CreateLaunchTemplate"]},
                       "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "TagOwnInstances", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": [f"{ec2}:*:instance/*"],
         "Condition": {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"},
                       "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
                       "ForAllValues:StringEquals": {"aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim",
                                                                     "Name"]}}},
        {"Sid": "DeleteOwn", "Effect": "Allow", "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
         "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"],
         "Condition": {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster}": "owned"},
                       "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}},
        {"Sid": "ReadRegion", "Effect": "Allow", "Resource": "*",
         "Action": ["ec2:DescribeAvailabilityZones", "ec2:DescribeImages", "ec2:DescribeInstances",
                    "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes", "ec2:DescribeLaunchTemplates",
                    "ec2:DescribeSecurityGroups", "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets",
                    "ec2:DescribeCapacityReservations",
                    # Its instance health poller, and its placement group lookup.
                    "ec2:DescribeInstanceStatus", "ec2:DescribePlacementGroups"],
         "Condition": {"StringEquals": {"aws:RequestedRegion": region}}},
        {"Sid": "ReadAmiParameters", "Effect": "Allow", "Action": ["ssm:GetParameter"],
         "Resource": [f"arn:aws:ssm:{region}::parameter/aws/service/*"]},
        {"Sid": "ReadPrices", "Effect": "Allow", "Action": ["pricing:GetProducts"], "Resource": "*"},
        {"Sid": "PassNodeRole", "Effect": "Allow", "Action": ["iam:PassRole"], "Resource": node_role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com"]}}},
        {"Sid": "ReadInstanceProfiles", "Effect": "Allow", "Action": ["iam:GetInstanceProfile"],
         "Resource": [f"arn:aws:iam::{account}:instance-profile/*"]},
        # An EC2NodeClass's finalizer lists the instance profiles Karpenter may have made for it;
        # denied, the finalizer fails on every try and the node class is never deleted.
        {"Sid": "ListInstanceProfiles", "Effect": "Allow", "Action": ["iam:ListInstanceProfiles"], "Resource": "*"},
        {"Sid": "ReadCluster", "Effect": "Allow", "Action": ["eks:DescribeCluster"],
         "Resource": [f"arn:aws:eks:{region}:{account}:cluster/{cluster}"]},
        {"Sid": "Interruptions", "Effect": "Allow", "Resource": queue_arn,
         "Action": ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]},
    ]}


def queue_policy(arn: str) -> dict:
    """EventBridge may send to the queue; nobody may use it without TLS."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "EventsSend", "Effect": "Allow",
         "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
         "Action": "sqs:SendMessage", "Resource": arn},
        {"Sid": "DenyPlainHttp", "Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": arn,
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    ]}


def build(name: str, cfg: EksCluster, cluster: aws.eks.Cluster, gpu_subnet: aws.ec2.Subnet, pool: AcceleratorPool, labels: dict,
          tags: dict, opts: pulumi.ResourceOptions, provider: aws.Provider) -> KarpenterFacts:
    """AWS resources for Karpenter; `pool` is the GPU AcceleratorPool (taint, GPUs per node)."""
    invoke = pulumi.InvokeOutputOptions(provider=provider)
    account = aws.get_caller_identity_output(opts=invoke).account_id
    nodes = cfg.gpu_nodes
    assert pool.taint is not None  # EKS GPU nodes always carry EKS_GPU_TAINT

    # --- the GPU nodes' identity ---------------------------------------------------------
    node_role = aws.iam.Role(f"{name}-karpenter-nodes", assume_role_policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }), tags=tags, opts=opts)
    for policy in NODE_POLICIES:
        aws.iam.RolePolicyAttachment(f"{name}-karpenter-nodes-{policy}", role=node_role.name,
                                     policy_arn=_MANAGED + policy, opts=opts)
    # Named after the cluster: the EC2NodeClass names it, so it must be known before `up` creates it.
    profile = aws.iam.InstanceProfile(f"{name}-karpenter-nodes", name=f"{cfg.name}-karpenter-gpu-nodes",
                                      role=node_role.name, tags=tags, opts=opts)
    # Nodes with this role may join the cluster.
    access = aws.eks.AccessEntry(f"{name}-karpenter-nodes", cluster_name=cluster.name,
                                 principal_arn=node_role.arn, type="EC2_LINUX", opts=opts)

    # --- interruption queue: Spot reclaims, scheduled maintenance, instance state ----------
    queue = aws.sqs.Queue(f"{name}-karpenter-interruptions", name=f"{cfg.name}-karpenter",
                          message_retention_seconds=300,
                          sqs_managed_sse_enabled=True, tags=tags, opts=opts)
    aws.sqs.QueuePolicy(f"{name}-karpenter-interruptions", queue_url=queue.url, policy=queue.arn.apply(
        lambda arn: json.dumps(queue_policy(arn))), opts=opts)
    for event, pattern in INTERRUPTION_EVENTS.items():
        rule = aws.cloudwatch.EventRule(f"{name}-karpenter-{event}", event_pattern=json.dumps(pattern),
                                        tags=tags, opts=opts)
        aws.cloudwatch.EventTarget(f"{name}-karpenter-{event}", rule=rule.name, arn=queue.arn, opts=opts)

    # --- the controller's identity (EKS Pod Identity) --------------------------------------
    controller_role = aws.iam.Role(f"{name}-karpenter-controller", assume_role_policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                       "Action": ["sts:AssumeRole", "sts:TagSession"]}],
    }), tags=tags, opts=opts)
    permissions = aws.iam.RolePolicy(f"{name}-karpenter-controller", role=controller_role.id, policy=pulumi.Output.all(
        cluster.name, account, node_role.arn, queue.arn).apply(
        lambda a: json.dumps(controller_policy(a[0], cfg.region, a[1], a[2], a[3]))), opts=opts)
    identity = aws.eks.PodIdentityAssociation(
        f"{name}-karpenter-controller", cluster_name=cluster.name, namespace=NAMESPACE,
        service_account=SERVICE_ACCOUNT, role_arn=controller_role.arn, opts=opts)

    # --- where nodes go: the GPU zone's private subnet, the cluster security group ----------
    aws.ec2.Tag(f"{name}-karpenter-subnet", resource_id=gpu_subnet.id, key=DISCOVERY_TAG, value=cfg.name, opts=opts)
    aws.ec2.Tag(f"{name}-karpenter-security-group", resource_id=cluster.vpc_config.cluster_security_group_id,
                key=DISCOVERY_TAG, value=cfg.name, opts=opts)

    family, device = AMI_FAMILY[nodes.ami_type]
    return KarpenterFacts(
        cluster_name=cluster.name,
        interruption_queue=queue.name,
        instance_profile=profile.name,
        discovery=cfg.name,
        zone=cfg.gpu_zone,
        instance_types=nodes.instance_types,
        ami_alias=f"{family}@{nodes.ami_version}",
        block_device=device,
        disk_size_gb=nodes.disk_size_gb,
        gpu_limit=pool.per_node * nodes.max_size,
        labels=labels,
        taint=dict(pool.taint),
        consolidate_after=nodes.consolidate_after,
        tags=tags,
        # Its permissions too: on destroy they must outlive the controller, which finalizes the
        # EC2NodeClass and terminates the nodes.
        ready=[identity, access, permissions],
    )
