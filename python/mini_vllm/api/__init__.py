"""The OpenAI-compatible HTTP API (FastAPI): completions, chat (harmony), models, health, metrics.

`build_app(state)` in `app.py` is the entry point; `mini_vllm.cli` runs it under uvicorn.
"""
