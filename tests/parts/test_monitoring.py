"""Metrics, against the real parts: every LiteLLM series the front door's dashboard queries is one
the pinned release defines, and the Grafana chart's dashboard downloads, as rendered, run for real
(curl over verified TLS; a failed download stops Grafana). What the stack applies for Prometheus:
tests/program/test_monitoring.py."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from components.platform import monitoring
from tests.conftest import need_charts, recording
from tools import charts
from tools import mock_engine as harness


def dashboard_exprs(name: str) -> str:
    return " ".join(t["expr"] for p in json.loads((monitoring.DASHBOARDS_DIR / name).read_text())["panels"]
                    for t in p["targets"])


def test_front_door_dashboard_uses_metrics_litellm_defines():
    """Every litellm_* series the dashboard queries is one LiteLLM's Prometheus callback defines
    (the pinned release's source), with prometheus_client's suffixes."""
    import glob
    sources = glob.glob(str(harness.PROJECT_DIR / ".venv-litellm/lib/python*/site-packages/litellm/integrations/"
                            "prometheus.py"))
    if not sources:
        pytest.skip("no .venv-litellm (`make setup`)")
    defined = set(re.findall(r'"(litellm_[a-z_]+)"', open(sources[0]).read()))
    used = set(re.findall(r"\b(litellm_[a-z_]+)", dashboard_exprs("front-door.json")))
    assert used
    base = {re.sub(r"_(total|bucket|sum|count)$", "", u) for u in used}
    assert base <= defined, base - defined


# --- Grafana's dashboard downloads, run for real ------------------------------------------


class _Dashboards(http.server.BaseHTTPRequestHandler):
    """Every host's dashboards (curl is pointed here): JSON, but 404 for paths in `missing`."""
    missing: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server's name)
        status, body = (404, b"404: Not Found") if self.path in self.missing else (
            200, json.dumps({"title": self.path, "panels": []}).encode())
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def dashboard_hosts(tmp_path_factory):
    """An HTTPS server holding a certificate for the hosts the dashboards come from, and a CA
    bundle that trusts it (as the download image's bundle trusts the real hosts)."""
    if not (shutil.which("openssl") and shutil.which("curl")):
        pytest.skip("needs openssl and curl")
    tmp = tmp_path_factory.mktemp("dashboards")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test",
                    "-addext", "subjectAltName=DNS:raw.githubusercontent.com,DNS:grafana.com",
                    "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")], check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Dashboards)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # curl as the image runs it, every host's connection sent to the server above.
    (tmp / "bin").mkdir()
    (tmp / "bin" / "curl").write_text(
        f'#!/bin/sh\nexec {shutil.which("curl")} --connect-to "::127.0.0.1:{server.server_address[1]}" "$@"\n')
    (tmp / "bin" / "curl").chmod(0o755)
    yield tmp
    server.shutdown()


def run_downloads(hosts, script: str, trusted: bool, missing: set[str] = frozenset()) -> tuple[int, dict]:
    """The chart's script run as its init container runs it (`sh`, POSIX: no pipefail), its
    dashboards folder moved under a temporary directory: (exit status, files written)."""
    _Dashboards.missing = set(missing)
    out = Path(tempfile.mkdtemp(dir=hosts))
    (out / "run.sh").write_text(script.replace("/var/lib/grafana/dashboards", str(out)))
    # The curl image sets CURL_CA_BUNDLE to its own bundle.
    bundle = hosts / "cert.pem" if trusted else Path(untrusting_bundle())
    run = subprocess.run(["sh", str(out / "run.sh")], capture_output=True, text=True, timeout=120,
                         env={"PATH": f"{hosts / 'bin'}:/usr/bin:/bin", "CURL_CA_BUNDLE": str(bundle)})
    files = {p.name: p.read_text() for p in out.rglob("*.json")}
    return run.returncode, files


def untrusting_bundle() -> str:
    """A CA bundle that does not know the test server's certificate."""
    for path in ("/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/cert.pem"):
        if Path(path).exists():
            return path
    import certifi
    return certifi.where()


def test_dashboards_are_downloaded_over_verified_tls_and_a_failed_one_stops_grafana(dashboard_hosts):
    """The grafana chart's download script as rendered (eks: vLLM's and NVIDIA's dashboards).
    With curl's -k an impostor's certificate was accepted; a gnetId dashboard whose datasource
    the chart rewrites in a pipe wrote an empty file and exited 0 when its download failed."""
    need_charts()
    (cm,) = [m.obj for m in charts.cluster_objects(recording("eks")) if m.obj["kind"] == "ConfigMap"
             and m.obj["metadata"]["name"] == monitoring.GRAFANA_SERVICE]
    script = cm["data"]["download_dashboards.sh"]
    urls = re.findall(r'"(https://[^"]+)"', script)
    assert len(urls) == len(monitoring.VLLM_DASHBOARDS) + 1
    status, files = run_downloads(dashboard_hosts, script, trusted=True)
    assert status == 0 and len(files) == len(urls)
    assert all(json.loads(text)["title"] for text in files.values())
    # A host whose certificate the image's bundle does not trust.
    assert run_downloads(dashboard_hosts, script, trusted=False)[0] != 0
    # Any one dashboard missing (a wrong tag, a moved file): the init container fails, Grafana
    # does not start and the release reports it.
    for url in urls:
        path = "/" + url.split("/", 3)[3]
        assert run_downloads(dashboard_hosts, script, trusted=True, missing={path})[0] != 0, url
