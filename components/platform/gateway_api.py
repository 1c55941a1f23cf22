"""GatewayApi: the Kubernetes Gateway API's resource types (Gateway, HTTPRoute, ReferenceGrant and
the rest of its standard channel) and the Inference Extension's (InferencePool and its companions),
which the edge's objects are made of and istiod translates into the ingress's Envoy.

Neither project publishes a chart: their CRDs are manifests in the projects' repositories, pinned
here by release tag. They come from those tags, or, with `charts.archiveDir`, from the same folder
as the chart archives, laid out as the repositories lay them out (`<project>-<version>/...`), so an
air-gapped cluster downloads nothing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from components.core.chart_source import archive_dir


@dataclass(frozen=True)
class CrdBundle:
    """A project's CRD manifests at one release: where the repository keeps them, and which."""

    project: str
    repository: str
    version: str
    path: str
    files: tuple[str, ...]

    @property
    def folder(self) -> str:
        """The bundle's folder under `charts.archiveDir`."""
        return f"{self.project}-{self.version}/{self.path.rsplit('/', 1)[-1]}"

    def sources(self, local: Optional[str]) -> list[str]:
        if local:
            return [os.path.join(local, self.folder, f) for f in self.files]
        base = f"https://raw.githubusercontent.com/{self.repository}/{self.version}/{self.path}"
        return [f"{base}/{f}" for f in self.files]


# Gateway API's standard channel: every CRD (istiod watches each of its kinds). Not the release's
# safe-upgrades admission policy, which would refuse anyone's later install of the experimental
# channel over these, cluster-wide: not this stack's decision to make.
GATEWAY_API = CrdBundle(
    "gateway-api", "kubernetes-sigs/gateway-api", "v1.6.1", "config/crd/standard",
    tuple(f"gateway.networking.k8s.io_{kind}.yaml" for kind in (
        "gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants", "backendtlspolicies",
        "listenersets", "tcproutes", "tlsroutes", "udproutes")),
)
# The Inference Extension's release whose body-based router and endpoint picker the edge runs:
# InferencePool (v1), and the alpha kinds its endpoint picker watches.
INFERENCE_EXTENSION = CrdBundle(
    "gateway-api-inference-extension", "kubernetes-sigs/gateway-api-inference-extension", "v1.5.0",
    "config/crd/bases",
    ("inference.networking.k8s.io_inferencepools.yaml", "inference.networking.x-k8s.io_inferenceobjectives.yaml",
     "inference.networking.x-k8s.io_inferencemodelrewrites.yaml"),
)
BUNDLES = (GATEWAY_API, INFERENCE_EXTENSION)


def manifest_sources() -> list[str]:
    """Every manifest the component applies, local paths or release URLs."""
    return [s for bundle in BUNDLES for s in bundle.sources(archive_dir())]


class GatewayApi(pulumi.ComponentResource):
    """The CRDs, or (`install` false) nothing: the cluster has them."""

    crds: Optional[k8s.yaml.v2.ConfigGroup] = None

    def __init__(self, name: str, install: bool = True, opts: Optional[pulumi.ResourceOptions] = None):
        super().__init__("llm-platform:index:GatewayApi", name, None, opts)
        if install:
            archives = archive_dir()
            missing = [s for s in manifest_sources() if "://" not in s and not os.path.isfile(s)]
            if archives and missing:
                raise pulumi.RunError(f"charts.archiveDir: {archives} has no {os.path.relpath(missing[0], archives)}; "
                                      f"expected the Gateway API and Inference Extension CRDs as their repositories "
                                      f"lay them out at the pinned releases ({', '.join(b.folder for b in BUNDLES)})")
            # Kept on destroy (and when no longer installed): deleting a CRD deletes every object of
            # its kind, other owners' too.
            self.crds = k8s.yaml.v2.ConfigGroup(f"{name}-crds", files=manifest_sources(),
                                                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True))
        self.register_outputs({})
