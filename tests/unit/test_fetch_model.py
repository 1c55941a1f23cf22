"""The model fetcher downloads only when the file is absent, verifies it, and never leaves a
half-written or wrong file under the final name. Exercised against a real HTTP server."""

import hashlib
import http.server
import subprocess
import sys
import threading

import pytest

from tools.mock_engine import PROJECT_DIR

SCRIPT = PROJECT_DIR / "scripts" / "fetch_model.py"
BODY = b"GGUF" + bytes(range(256)) * 64


@pytest.fixture
def server():
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            if self.path != "/model.gguf":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()


def fetch(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_downloads_once_verifies_and_renames(server, tmp_path):
    base, hits = server
    dest = tmp_path / "models" / "model.gguf"
    sha = hashlib.sha256(BODY).hexdigest()
    args = ["--dest", str(dest), "--url", f"{base}/model.gguf", "--sha256", sha, "--size", str(len(BODY))]

    first = fetch(*args)
    assert first.returncode == 0, first.stderr
    assert "downloaded" in first.stdout
    assert dest.read_bytes() == BODY
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.gguf"]  # no temp file left

    second = fetch(*args)
    assert second.returncode == 0 and "present" in second.stdout
    assert hits == ["/model.gguf"]  # the second run never downloaded


def test_wrong_checksum_keeps_nothing(server, tmp_path):
    base, _ = server
    dest = tmp_path / "model.gguf"
    result = fetch("--dest", str(dest), "--url", f"{base}/model.gguf", "--sha256", "0" * 64)
    assert result.returncode == 1
    assert "sha256 does not match" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_wrong_size_of_present_file_is_reported(tmp_path):
    dest = tmp_path / "model.gguf"
    dest.write_bytes(b"short")
    result = fetch("--dest", str(dest), "--size", "999")
    assert result.returncode == 1
    assert "size is 5 bytes, expected 999" in result.stderr


def test_failed_download_says_why(server, tmp_path):
    base, _ = server
    result = fetch("--dest", str(tmp_path / "x.gguf"), "--url", f"{base}/missing.gguf")
    assert result.returncode == 1
    assert "downloading" in result.stderr and "404" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_file_without_url_is_refused(tmp_path):
    result = fetch("--dest", str(tmp_path / "x.gguf"))
    assert result.returncode == 1 and "no download URL" in result.stderr
