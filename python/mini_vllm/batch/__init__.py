"""Offline inference over OpenAI Batch files (`mini-vllm batch`): jsonl.py is the file format and its
resumable output, run.py sends each request through the server's own app in-process."""
