"""The wake-up query KEDA is given for a server scaled to zero, evaluated by Prometheus's own
engine (tests/promql.py) on the series a restart without data and a first request leave. The
ScaledObjects themselves: tests/program/test_autoscaling.py."""

from __future__ import annotations

from components.serving.autoscaling import FRONT_DOOR_REQUESTS
from tests import promql
from tests.program.test_autoscaling import wake_query


def front_door_series(model: str = "qwen", key: str = "a1", status: str = "200") -> str:
    """A LiteLLM counter series as Prometheus stores it (the target's labels added)."""
    return (f'{FRONT_DOOR_REQUESTS}{{namespace="front-door",job="litellm",pod="litellm-0",requested_model="{model}",'
            f'hashed_api_key="{key}",status_code="{status}"}}')


FRONT_DOOR_UP = 'up{namespace="front-door",job="litellm",pod="litellm-0"}'


def test_a_prometheus_restarted_without_its_data_wakes_no_server():
    """Prometheus on emptyDir restarts (an upgrade, a node drain): its data begins again at time 0
    while LiteLLM's counters carry on. Every counter series has nothing a window earlier, so it
    looked like a first request and every server at zero woke. No request came: nothing wakes."""
    query = wake_query()
    since_restart = {front_door_series(): "7x60", front_door_series("other", "b2"): "3x60", FRONT_DOOR_UP: "1x60"}
    for at in (30, 120, 290, 310, 600):
        assert promql.value(since_restart, query, at) == 0, at


def test_the_first_request_for_a_model_still_wakes_it():
    """Where Prometheus has scraped the front door for a window, a series that starts now is a
    request; so is an increase. A retry wakes it even right after a restart without data."""
    query = wake_query()
    # Scraped for 10 minutes; the first request for qwen at 10 min.
    first = {front_door_series(): "_x40 1x20", FRONT_DOOR_UP: "1x60"}
    assert promql.value(first, query, 590) == 0
    assert promql.value(first, query, 615) == 1
    assert promql.value(first, query, 600 + 310) == 0  # the window has passed
    # Right after a restart, a counter that moves is a request.
    retried = {front_door_series(): "4x8 5x20", FRONT_DOOR_UP: "1x28"}
    assert promql.value(retried, query, 100) == 0
    assert promql.value(retried, query, 150) == 1
