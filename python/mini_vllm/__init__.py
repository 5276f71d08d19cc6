"""mini-vLLM runtime: an OpenAI-compatible server for GPT-OSS with its own paged-KV engine."""

__version__ = "0.1.0"
