"""Mirrors vLLM's module path so `python -m mini_vllm.entrypoints.openai.api_server` works like vLLM's."""
