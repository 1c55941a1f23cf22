"""What a team's quota counts for the mesh's sidecar is what the pinned istiod chart injects: its
injector renders the limit the program sets (the check would otherwise count a guess)."""

from __future__ import annotations

import dataclasses
import json

from components.config.team_models import SIDECAR_MEMORY_LIMIT
from tools import charts
from tools import mock_engine as harness


def test_the_injected_sidecars_memory_limit_is_the_one_the_quota_counts():
    rec = harness.run("eks")
    (istiod,) = [r for r in charts.chart_releases(rec) if r.chart == "istiod"]
    assert injected_limit(istiod) == SIDECAR_MEMORY_LIMIT
    # ...and it is the program's value the chart injects, not a default that happens to agree.
    other = dataclasses.replace(istiod, values={**istiod.values, "global": {**istiod.values["global"], "proxy": {
        "resources": {"limits": {"memory": "3Gi"}}}}})
    assert injected_limit(other) == "3Gi"


def injected_limit(release) -> str:
    injector = [o for o in charts.render_release(release, charts.kube_version("eks"))
                if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "istio-sidecar-injector"]
    assert injector, "istiod renders no sidecar injector"
    return json.loads(injector[0]["data"]["values"])["global"]["proxy"]["resources"]["limits"]["memory"]
