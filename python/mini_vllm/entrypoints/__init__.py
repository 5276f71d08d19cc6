"""Command-line entry points: `mini-vllm serve` and vLLM's `python -m ...entrypoints.openai.api_server`."""
