"""Where the tests find the real parts they run: beside the repository in `../shared`, or where
an environment variable points (as `KUBEBUILDER_ASSETS` does for the control plane)."""

import os
from pathlib import Path

from tools.mock_engine import PROJECT_DIR

SHARED = PROJECT_DIR.parent / "shared"
# llama.cpp's server (build b11434) and a tiny GGUF model it loads at once.
LLAMA_SERVER = Path(os.environ.get("LLAMA_SERVER_BIN") or SHARED / "bin" / "llama-server")
TINY_MODEL = Path(os.environ.get("LLAMA_TEST_MODEL") or SHARED / "models" / "tiny-random-llama.gguf")
