"""logit_bias in the sampler, on every device this machine has (CPU here; CPU and CUDA on the GPU box)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mini_vllm.engine.sampler import Sampler
from mini_vllm.sampling_params import SamplingParams

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def row(**kw):
    return SimpleNamespace(params=SamplingParams(**kw), generator=None)


@pytest.mark.parametrize("device", DEVICES)
def test_logit_bias_steers_greedy_and_random_rows(device):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1000, generator=gen).to(device)
    frozen = logits.clone()
    top = int(frozen[3].argmax())
    rows = [row(temperature=0.0, logit_bias={7: 100.0}),
            row(temperature=1.0, top_p=0.9, logit_bias={42: 100.0, 7: -100.0}),
            row(temperature=0.0),                                    # no bias: untouched
            row(temperature=0.0, logit_bias={top: -100.0}, logprobs=1)]
    res = Sampler(seed=1)(logits, rows)
    assert res.token_ids[:3] == [7, 42, int(frozen[2].argmax())]
    assert res.token_ids[3] != top
    assert res.logprobs[3][0] == pytest.approx(max(v for _, v in res.logprobs[3][1]))  # logprobs see the bias
    assert torch.equal(logits, frozen)          # the logits buffer (a CUDA graph's output) is never written
