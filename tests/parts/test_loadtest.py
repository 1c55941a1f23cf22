"""The serving benchmark (tools/loadtest), run at a tiny scale against the real llama-server with
the tiny model: its figures, its checks of every answer, its verdict line and exit code, its chart."""

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tools import mock_engine as harness
from tools.loadtest import aiperf, check
from tools.loadtest.target import PortForward, TargetError, model_service

SHARED = harness.PROJECT_DIR.parent / "shared"
LLAMA_SERVER = SHARED / "bin" / "llama-server"
MODEL = SHARED / "models" / "tiny-random-llama.gguf"
ALIAS = "tinyllama"
KEY = "loadtest-key-0123456789"
# Tiny and bounded: 2 levels, 4 measured + 1 warm-up request each, 8 output tokens. A connection per
# request: llama-server closes a kept-alive connection after a streamed answer, and a client that
# reuses it in that moment loses the request (the benchmark rightly counts it; docs/benchmark.md tells).
SMALL = ["--concurrency", "1,2", "--requests", "4", "--warmup", "1", "--input-tokens", "24", "--output-tokens", "8",
         "--connections", "never"]
ONE = ["--concurrency", "1", "--requests", "2", "--warmup", "0", "--input-tokens", "24", "--output-tokens", "8",
       "--connections", "never"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not LLAMA_SERVER.exists() or not MODEL.exists():
        pytest.skip(f"needs {LLAMA_SERVER} and {MODEL} (the shared real parts)")
    if not aiperf.AIPERF.exists():
        pytest.fail("the benchmark needs its own virtualenv: python3 -m venv .venv-loadtest && "
                    ".venv-loadtest/bin/pip install -r requirements-loadtest.txt (`make test` does it)")
    key_file = tmp_path_factory.mktemp("keys") / "keys"
    key_file.write_text(KEY)
    port = _free_port()
    proc = subprocess.Popen([str(LLAMA_SERVER), "-m", str(MODEL), "--alias", ALIAS, "--api-key-file", str(key_file),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("llama-server did not become healthy")
        yield f"{url}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def loadtest(tmp: Path, *args: str, key: str = KEY) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLM_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "tools.loadtest", "--out", str(tmp), *args],
                          cwd=harness.PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def good_run(server, tmp_path_factory):
    out = tmp_path_factory.mktemp("good")
    result = loadtest(out, "--base-url", server, "--model", ALIAS, "--label", "CPU, tiny random model", *SMALL)
    return result, out, json.loads((out / "report.json").read_text())


def test_a_clean_run_passes_with_plausible_figures(good_run):
    result, out, report = good_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0].startswith("PASSED: all 10 requests checked")
    assert report["ok"] and [lvl["concurrency"] for lvl in report["levels"]] == [1, 2]
    for lvl in report["levels"]:
        f = lvl["figures"]
        assert lvl["failed"] == 0 and lvl["tool_exit_code"] == 0 and lvl["requests_checked"] == 5
        # Every chunk of every answer named the model that was asked for.
        assert set(lvl["served_models"]) == {ALIAS}
        assert 0 < f["ttft_ms"]["p50"] <= f["ttft_ms"]["p90"] <= f["ttft_ms"]["p99"] < 30_000
        # ITL here is AIPerf's per-request (E2E - TTFT) / (tokens - 1). The tiny model can stream a
        # whole answer within one socket read, so a request's ITL may truly be 0.0 — on a loaded
        # machine every request of a level did (seen once). Time passes end to end, though.
        assert 0 <= f["itl_ms"]["p50"] <= f["itl_ms"]["p99"]
        assert f["e2e_ms"]["p50"] > 0
        assert f["ttft_ms"]["p50"] < f["e2e_ms"]["p99"] and f["e2e_ms"]["p50"] <= f["e2e_ms"]["p99"]
        # ignore_eos: every answer is exactly the requested length, as the server counted it.
        assert f["output_tokens_mean"] == 8
        # The prompt as the server counted it: at least the words asked for, plus the chat template.
        assert 24 <= f["input_tokens_server"] < 200
        assert f["requests_per_s"] > 0
        assert f["output_tokens_per_s"] == pytest.approx(8 * f["requests_per_s"], rel=0.25)
    table = (out / "report.md").read_text()
    assert table.startswith("PASSED") and f"| {ALIAS} | 2 | 4 + 1 | 0 |" in table


def _prompts(level_dir: Path) -> list[str]:
    return [json.dumps(json.loads(line)["payload"]["messages"])
            for line in (level_dir / "aiperf" / check.RAW_RECORDS).read_text().splitlines()]


def test_no_prompt_is_sent_twice_in_a_run(good_run):
    """A prompt sent before is answered from the server's prompt cache (llama.cpp; vLLM's prefix
    caching): every request of every level, warm-ups included, must carry a prompt of its own."""
    _, out, report = good_run
    levels = sorted((out / "runs" / f"{ALIAS}-api").iterdir())
    prompts = [p for level in levels for p in _prompts(level)]
    assert [lvl.name for lvl in levels] == ["c1", "c2"] and len(prompts) == 10
    assert len(set(prompts)) == len(prompts)
    assert isinstance(report["settings"]["seed"], int)


def test_the_cached_prompt_tokens_are_reported(good_run):
    """llama-server says how many prompt tokens it read from its cache: the report shows them per
    level, and with prompts of their own they are at most a shared start, not the whole prompt."""
    _, out, report = good_run
    for lvl in report["levels"]:
        f = lvl["figures"]
        assert f["cached_input_tokens"] is not None
        assert 0 <= f["cached_input_tokens"] < f["input_tokens_server"] / 2
    header = (out / "report.md").read_text().split("| model (path)")[1].splitlines()[0]
    assert header.rstrip().endswith("| in tok | cached |")


def test_the_chart_is_written(good_run):
    _, out, _ = good_run
    png = (out / "chart.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000


def test_the_key_is_in_no_argument_or_artifact(good_run):
    _, out, _ = good_run
    for path in out.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    config = json.loads(next(out.rglob("aiperf.yaml")).read_text())
    assert config["benchmark"]["endpoint"]["apiKey"] == "${%s}" % aiperf.KEY_ENV


def test_a_wrong_key_fails_the_run(server, tmp_path):
    result = loadtest(tmp_path, "--base-url", server, "--model", ALIAS, *ONE, key="not-the-key")
    first = result.stdout.splitlines()[0]
    assert result.returncode == 1
    assert first.startswith("FAILED: 2 of 2 requests failed (2x HTTP 401"), first
    assert "not a result" in first


def test_an_unknown_model_fails_the_run(server, tmp_path):
    # llama-server answers any model name with its own alias and 200: only the comparison catches it.
    result = loadtest(tmp_path, "--base-url", server, "--model", "gpt-4o", *ONE)
    first = result.stdout.splitlines()[0]
    assert result.returncode == 1
    assert first.startswith("FAILED: 2 of 2 requests failed (2x served model 'tinyllama' is not the requested 'gpt-4o'")
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["levels"][0]["served_models"] == {ALIAS: report["levels"][0]["served_models"][ALIAS]}


def test_a_stream_cut_short_or_empty_is_a_failure(good_run):
    """A real answer from the good run, cut before its final chunk, or with its text removed."""
    _, out, _ = good_run
    raw = json.loads((next(out.rglob(check.RAW_RECORDS))).read_text().splitlines()[0])
    assert check.stream_problems(raw, ALIAS, check.Counter()) == []

    def data(r):
        return [json.loads(p["value"]) for resp in r["responses"] for p in resp["packets"]
                if p.get("name") == "data" and p["value"] != "[DONE]"]

    final = next(i for i, resp in enumerate(raw["responses"])
                 if any('"finish_reason":"' in p["value"] for p in resp["packets"]))
    cut = {**raw, "responses": raw["responses"][:final]}
    assert check.stream_problems(cut, ALIAS, check.Counter()) == [
        "stream ended without a final chunk (no finish_reason)", "no usage in the stream (token counts unknown)"]
    assert any(c["choices"] and c["choices"][0]["delta"].get("content") for c in data(cut))

    silent = json.loads(json.dumps(raw))
    for resp in silent["responses"]:
        for p in resp["packets"]:
            if p.get("name") == "data" and p["value"] != "[DONE]":
                chunk = json.loads(p["value"])
                for choice in chunk.get("choices", []):
                    choice.get("delta", {}).pop("content", None)
                p["value"] = json.dumps(chunk)
    assert check.stream_problems(silent, ALIAS, check.Counter()) == [
        "empty completion", "usage.completion_tokens 8 does not fit the text streamed (0 content chunks, 0 bytes)"]


class DefectiveServer(BaseHTTPRequestHandler):
    """Streams OpenAI chat chunks with one defect, chosen by the model asked for:
    short   - one token and finish_reason "stop" although ignore_eos asked for the full length;
    lying   - one one-letter chunk, but usage claims 10000 completion tokens;
    nousage - a full answer with no usage chunk;
    nomodel - a full answer whose chunks name no model;
    slow    - a token every 0.2 s for up to a minute (sets `slow_started`)."""
    slow_started = threading.Event()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        defect, wanted = body["model"], body.get("max_completion_tokens") or body.get("max_tokens") or 8
        if defect == "slow":
            return self.stream_slowly()
        named = {} if defect == "nomodel" else {"model": defect}
        tokens = ["x"] if defect in ("short", "lying") else [f" w{i}" for i in range(wanted)]
        finish = "stop" if defect == "short" else "length"
        usage = {"prompt_tokens": 30, "completion_tokens": 10000 if defect == "lying" else len(tokens)}
        chunks = [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in tokens]
        chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if defect != "nousage":
            chunks.append({"choices": [], "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for chunk in chunks:
            chunk.update(named, object="chat.completion.chunk", id="c1", created=0)
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def stream_slowly(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        DefectiveServer.slow_started.set()
        chunk = {"choices": [{"index": 0, "delta": {"content": " w"}, "finish_reason": None}], "model": "slow"}
        try:
            for _ in range(300):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass  # the client went away


@pytest.fixture(scope="module")
def defective_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), DefectiveServer)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.mark.parametrize("defect, reason", [
    ("short", "finish_reason 'stop' with ignore_eos (expected 'length')"),
    ("lying", "usage.completion_tokens 10000 is not the requested 8"),
    ("nousage", "no usage in the stream (token counts unknown)"),
    ("nomodel", "served model unknown (no chunk names a model)"),
])
def test_a_defective_answer_fails_the_run(defective_server, tmp_path, defect, reason):
    """Answers that look fine to a status check but would make the figures lie."""
    if not aiperf.AIPERF.exists():
        pytest.fail("the benchmark needs its own virtualenv (`make .venv-loadtest/.installed`)")
    result = loadtest(tmp_path, "--base-url", defective_server, "--model", defect, *ONE)
    first = result.stdout.splitlines()[0]
    assert result.returncode == 1, result.stdout + result.stderr
    assert first.startswith(f"FAILED: 2 of 2 requests failed (2x {reason}"), first
    # The chart is drawn for a failed run too (titled as such), even with figures missing.
    assert (tmp_path / "chart.png").exists(), result.stdout
    reasons = json.loads((tmp_path / "report.json").read_text())["levels"][0]["failure_reasons"]
    if defect == "lying":
        assert reasons == {reason: 2, "usage.completion_tokens 10000 does not fit the text streamed "
                                      "(1 content chunks, 1 bytes)": 2}
    elif defect == "short":
        assert reasons == {reason: 2, "usage.completion_tokens 1 is not the requested 8": 2}
    else:
        assert reasons == {reason: 2}


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, process group) of every process."""
    found = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(stat_file.parent.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def _group_members(pgid: int) -> list[int]:
    return [pid for pid, (state, _, group) in _processes().items() if group == pgid and state != "Z"]


def test_sigterm_leaves_nothing_running(defective_server, tmp_path):
    """SIGTERM in the middle of a level ends AIPerf's whole process group, closes the --direct
    port-forward and removes its kubeconfig file, like Ctrl-C."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    outputs = {"apiBaseUrl": defective_server, "apiKey": KEY, "modelAliases": ["slow"], "kubeconfig": "kind: Config\n"}
    (bin_dir / "pulumi").write_text(f"#!/bin/sh\nprintf '%s\\n' '{json.dumps(outputs)}'\n")
    (bin_dir / "kubectl").write_text(STUB_KUBECTL)
    for tool in ("pulumi", "kubectl"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    DefectiveServer.slow_started.clear()
    proc = subprocess.Popen([sys.executable, "-m", "tools.loadtest", "-s", "local", "--direct",
                             "--out", str(tmp_path / "out"), *ONE], cwd=harness.PROJECT_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(600):
            if DefectiveServer.slow_started.wait(0.1) or proc.poll() is not None:
                break
        assert DefectiveServer.slow_started.is_set(), proc.communicate()[0]
        # AIPerf renames its processes: it is the benchmark's child, leading a group of its own.
        pgid = next(pid for pid, (_, parent, group) in _processes().items() if parent == proc.pid and group == pid)
        assert pgid != os.getpgid(proc.pid) and len(_group_members(pgid)) > 1
        proc.send_signal(15)
        output = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:  # the test failed early: still leave nothing behind
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 128 + 15, output
    assert _group_members(pgid) == []
    argv = (bin_dir / "argv").read_text().split()
    assert (bin_dir / "closed").read_text().strip() == "closed"
    assert not Path(argv[argv.index("--kubeconfig") + 1]).exists()


def test_a_client_error_is_shown_as_it_came():
    message = "ServerDisconnectedError(None, 'Server disconnected')"
    assert check._error_reason({"type": "ServerDisconnectedError", "message": message}) == message
    assert check._error_reason({"type": "TimeoutError", "message": "read timed out"}) == "TimeoutError: read timed out"
    assert check._error_reason({"code": 401, "type": "Unauthorized", "message": "x"}) == "HTTP 401 Unauthorized"


def test_records_are_split_on_newlines_only(good_run, tmp_path):
    """Generated text may hold U+2028 (a line separator to str.splitlines, not to JSON Lines)."""
    _, out, _ = good_run
    level = next(out.rglob(check.RAW_RECORDS)).parent
    for name in (check.RECORDS, check.RAW_RECORDS):
        lines = (level / name).read_bytes().split(b"\n")
        (tmp_path / name).write_bytes(b"\n".join(lines).replace(b'"content":"', '"content":"\u2028'.encode(), 1))
    checked = check.check_run(tmp_path, 5)
    assert checked.total == 5 and checked.failures == []


def test_a_stack_is_reached_through_its_outputs(server, tmp_path):
    """-s reads the base URL, key and models from `pulumi stack output` (here a stand-in CLI that
    prints outputs naming the real server)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    outputs = {"apiBaseUrl": server, "apiKey": KEY, "modelAliases": [ALIAS], "uiUrl": "http://x/"}
    (bin_dir / "pulumi").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/pulumi-args\necho '{json.dumps(outputs)}'\n")
    (bin_dir / "pulumi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "LLM_API_KEY"}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run([sys.executable, "-m", "tools.loadtest", "-s", "local", "--out", str(tmp_path / "out"), *ONE],
                            cwd=harness.PROJECT_DIR, env=env, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "pulumi-args").read_text().split() == [
        "stack", "output", "--stack", "local", "--json", "--show-secrets"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"PASSED: all 2 requests checked (2xx, non-empty, final chunk, served model = "
                                    f"requested, usage, exact length) - stack local, {ALIAS}\n")


def test_a_stack_without_the_pulumi_cli_says_what_to_do(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    result = subprocess.run([sys.executable, "-m", "tools.loadtest", "-s", "local", "--out", str(tmp_path)],
                            cwd=harness.PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "FAILED: nothing measured: -s local reads the stack's outputs with the pulumi CLI, which is not on PATH; "
        "pass --base-url, --model and the key (LLM_API_KEY) instead"]


def test_a_pulumi_answer_that_is_not_json_is_one_failed_line(tmp_path):
    (tmp_path / "pulumi").write_text("#!/bin/sh\necho 'warning: a newer version of Pulumi is available'\n")
    (tmp_path / "pulumi").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "tools.loadtest", "-s", "local", "--out", str(tmp_path / "out")],
                            cwd=harness.PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "FAILED: nothing measured: pulumi stack output --stack local did not print JSON: "
        "'warning: a newer version of Pulumi is available'"]


def test_any_error_is_one_failed_line(tmp_path):
    (tmp_path / "taken").write_text("a file where the report folder should go")
    result = loadtest(tmp_path / "taken", "--base-url", "http://127.0.0.1:9/v1", "--model", ALIAS, *ONE)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.stdout.startswith("FAILED: the benchmark stopped: FileExistsError: "), result.stdout


STUB_KUBECTL = """#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/argv"
cp "$2" "$(dirname "$0")/kubeconfig-seen" 2>/dev/null
trap 'echo closed > "$(dirname "$0")/closed"; exit 0' TERM
echo "Forwarding from 127.0.0.1:${7%%:*} -> 8080"
while :; do sleep 0.1; done
"""


def test_direct_reaches_the_router_where_the_stack_runs_it():
    # The router serves every model (by the request's `model`); elsewhere each model has its Service.
    assert model_service("local", "tinyllama") == "llama-router"
    assert model_service("eks", "llama") == "llama"


def test_direct_opens_the_port_forward_it_names_and_closes_it(tmp_path):
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(STUB_KUBECTL)
    kubectl.chmod(0o755)
    with PortForward("tinyllama", "models", kubeconfig_text="kind: Config\n", kubectl=str(kubectl)) as fwd:
        kubeconfig = Path(fwd.kubeconfig)
        assert stat.S_IMODE(kubeconfig.stat().st_mode) == 0o600
        assert fwd.url == f"http://127.0.0.1:{fwd.port}"
        proc = fwd.proc
    assert (tmp_path / "argv").read_text().split() == [
        "--kubeconfig", str(kubeconfig), "--namespace", "models", "port-forward", "service/tinyllama",
        f"{fwd.port}:http", "--address", "127.0.0.1"]
    assert (tmp_path / "kubeconfig-seen").read_text() == "kind: Config\n"
    assert proc.poll() is not None and (tmp_path / "closed").read_text().strip() == "closed"
    assert not kubeconfig.exists()


def test_a_port_forward_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path):
    kubectl = "kubectl"
    if subprocess.run(["which", kubectl], capture_output=True).returncode:
        pytest.skip("kubectl not on PATH")
    # The real kubectl against an API server that is not there.
    config = ("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
              "users: [{name: u, user: {token: t}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
              "current-context: x\n")
    forward = PortForward("tinyllama", "models", kubeconfig_text=config, timeout_s=20)
    with pytest.raises(TargetError, match=r"kubectl port-forward service/tinyllama -n models did not start: .*127\.0\.0\.1:1"):
        forward.__enter__()
    assert forward.proc.poll() is not None and forward._tmp is None
