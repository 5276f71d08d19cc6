"""`python -m mini_vllm serve MODEL_DIR` - same as the `mini-vllm` console script."""
from mini_vllm.cli import main

main()
