"""The mesh's sidecar, as every injected pod carries it: what the mesh sets and what a team's
quota counts for it, written once."""

# Istio's own defaults (istiod 1.30.3's global.proxy.resources), set explicitly so a quota's count
# of them holds whatever the chart's defaults become.
SIDECAR_MEMORY_LIMIT = "1Gi"
SIDECAR_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "2000m", "memory": SIDECAR_MEMORY_LIMIT},
}
