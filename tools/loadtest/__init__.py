"""Serving benchmark: AIPerf drives the load, this package runs it, checks every response and reports.

    python -m tools.loadtest -s <stack>            # the stack's /v1, key and models from its outputs
    python -m tools.loadtest --base-url URL --model NAME   # any OpenAI-compatible server

The driver needs only the standard library; AIPerf, the tokenizer and matplotlib live in
`.venv-loadtest` (`make .venv-loadtest/.installed`).
"""
