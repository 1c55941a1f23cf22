# Set-up and tests. `make test` is what CI runs (.ci/run) on a clean clone.
PYTHON ?= python3

.PHONY: test setup check test-parts test-engine docs lint

# Every tier, on two workers, each test file on one of them: a file's tests share what they start
# (a control plane, a proxy, a stack deployed by the engine), and much of a real part's time is
# waiting on another process, which the other worker fills. Files go out in the order collected,
# the engine's (few tests, the longest) first, so the short ones fill the end.
test: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The inner loop, the unit and program tiers (tests/README.md): the config models and the scripts,
# the program under the mock engine (local and the clouds), the offline render with every chart,
# the policy pack and the workflows. No real part runs. `make test` runs every tier.
check: setup
	.venv/bin/python -m pytest -q -n auto -m "unit or program"

# One tier alone: the real parts (LiteLLM, llama-server, the control plane, Helm's templates,
# checkov, ...), or the Pulumi engine.
test-parts: setup
	.venv/bin/python -m pytest -m parts

test-engine: setup
	.venv/bin/python -m pytest -m engine

# The config reference (docs/configuration.md) and the editor schema (schema/stack-config.schema.json),
# generated from the docstrings in components/config/; the suite (tests/unit/test_docs.py) fails while
# either is stale.
docs: .venv/.installed
	.venv/bin/python -m tools.config_reference
	.venv/bin/python -m tools.teams codeowners

# ruff and mypy as pyproject.toml configures them (the suite: pyflakes' rules only; the policy
# pack, a program of its own, in a second mypy run). Every check runs; any finding fails it.
lint: .venv/.installed
	@status=0; \
	for check in ".venv/bin/ruff check ." ".venv/bin/mypy" ".venv/bin/mypy policy"; do \
		echo "$$check"; $$check || status=1; \
	done; \
	exit $$status

setup: .venv/.installed .venv-checkov/.installed .venv-litellm/.installed .venv-loadtest/.installed \
	tests/crd/node_modules/.installed .cache/vllm/.fetched .cache/promql/promql.test .cache/engine-tools.stamp \
	.cache/edge-tools.stamp

# The program's and the tests' dependencies.
.venv/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -q -r requirements-dev.txt
	touch $@

# checkov pins packages that clash with pulumi's: it gets a virtualenv of its own.
.venv-checkov/.installed: requirements-checkov.txt
	$(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/pip install -q -r requirements-checkov.txt
	touch $@

# The front door's LiteLLM release, started for real by tests/parts/test_front_door.py; its pins clash
# with pulumi's too.
.venv-litellm/.installed: requirements-litellm.txt
	$(PYTHON) -m venv .venv-litellm
	.venv-litellm/bin/pip install -q -r requirements-litellm.txt
	touch $@

# The serving benchmark's load generator (AIPerf) and chart (matplotlib): their pins clash with
# pulumi's, so `python -m tools.loadtest` drives them here as subprocesses. The offline word-level
# tokenizer for its prompts is built from the installed AIPerf's own corpus.
.venv-loadtest/.installed: requirements-loadtest.txt tools/loadtest/wordtok.py
	$(PYTHON) -m venv .venv-loadtest
	.venv-loadtest/bin/pip install -q -r requirements-loadtest.txt
	rm -rf .venv-loadtest/word-tokenizer
	.venv-loadtest/bin/python -m tools.loadtest.wordtok .venv-loadtest/word-tokenizer
	touch $@

# Published schemas of the custom resources (Istio, Argo CD, cert-manager).
tests/crd/node_modules/.installed: tests/crd/package.json tests/crd/package-lock.json
	npm ci --prefix tests/crd --no-audit --no-fund --loglevel=error
	touch $@

# The wheel of the vLLM release the images run (about 320 MB, once): the suite reads its argument
# parser and env vars. A new pin in components/serving/runtimes.py fetches the new release.
.cache/vllm/.fetched: components/serving/runtimes.py | .venv/.installed
	.venv/bin/python -m tools.vllm_wheel
	touch $@

# Prometheus's PromQL engine at the release kube-prometheus-stack runs (tools/promql/go.mod), built
# from the Go module proxy as a test binary: tests/promql.py evaluates the queries KEDA is given.
# Without Go those tests skip, saying so.
.cache/promql/promql.test: tools/promql/go.mod tools/promql/go.sum tools/promql/promql_test.go
	@if command -v go >/dev/null; then mkdir -p $(@D) && cd tools/promql && go test -c -o ../../$@ .; \
	else echo "no Go: the PromQL tests will skip"; fi

# The Pulumi CLI, the Kubernetes resource plugin and kwok at their pinned versions, for the engine
# tests: taken from PATH when there, else built once from the Go module proxy into a cache outside
# the repository (minutes on a cold machine; a warm one reuses it). Needs Go 1.26+.
.cache/engine-tools.stamp: tools/engine_tools.py | .venv/.installed
	.venv/bin/python -m tools.engine_tools
	mkdir -p .cache && touch $@

# The edge's body-based router and endpoint picker (the Gateway API Inference Extension's, pinned in
# tools/edge_tools.py), built once from the Go module proxy into the same cache; Envoy itself comes
# with requirements-dev.txt. Without Go the build is skipped with a warning and the tests that need
# the router skip, saying so.
.cache/edge-tools.stamp: tools/edge_tools.py | .venv/.installed
	.venv/bin/python -m tools.edge_tools
	@if .venv/bin/python -m tools.edge_tools --check; then mkdir -p .cache && touch $@; fi
