"""Fixtures for checking our GPT-OSS against transformers on the tiny checkpoint (same files, float32)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gptoss_reference import GEN_TOKENS, PROMPT_LENS

from mini_vllm.model.tiny import write_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-gpt-oss")


@pytest.fixture(scope="session")
def prompts(tiny_dir) -> list[list[int]]:
    g = torch.Generator().manual_seed(1234)
    from mini_vllm.model.tokenizer import Tokenizer
    n_text = Tokenizer.from_pretrained(tiny_dir).token_to_id("<|startoftext|>")   # ordinary tokens below it
    return [torch.randint(0, n_text, (n,), generator=g).tolist() for n in PROMPT_LENS]


@pytest.fixture(scope="session")
def hf_model(tiny_dir):
    from transformers import GptOssForCausalLM, Mxfp4Config

    model = GptOssForCausalLM.from_pretrained(tiny_dir, quantization_config=Mxfp4Config(dequantize=True),
                                              dtype=torch.float32)
    model.eval()
    model.generation_config.eos_token_id = None      # compare fixed-length greedy runs
    return model


@pytest.fixture(scope="session")
def hf_greedy(hf_model, prompts) -> list[list[int]]:
    """transformers' greedy continuation of each prompt (GEN_TOKENS tokens, no EOS stop)."""
    outs = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=GEN_TOKENS, pad_token_id=0)
            outs.append(out[0, len(p):].tolist())
    return outs

