"""minibuild: the build engine, image builder, rollout and verification behind mini-vLLM's tasks."""
