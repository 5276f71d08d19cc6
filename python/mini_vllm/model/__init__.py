"""The GPT-OSS model in plain torch: config, layers, MXFP4 experts, weight loading, the tiny checkpoint.

Plain torch so that the whole runtime runs (and is tested against transformers) on CPU; the CUDA
fast path swaps individual ops for kernels from `mini_vllm.ops` without changing the module tree.
"""
