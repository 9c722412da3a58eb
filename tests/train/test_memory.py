"""The memory estimate that lets the trainer refuse a run too big for the machine."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys

import pytest
import torch

from longseq.models import ModelConfig, build_model
from longseq.train import memory

CPU = torch.device("cpu")


def _model(attention: str, **opts: int) -> torch.nn.Module:
    cfg = ModelConfig(architecture="sequence-classification", attention=attention,
                      attention_options=opts, hidden_size=64, num_layers=2, num_heads=4,
                      intermediate_size=128, dropout=0.1, max_length=4096,
                      num_labels=3)  # fmt: skip
    return build_model(cfg, seed=0).train()


def test_saved_bytes_follow_the_pattern_and_leave_no_trace():
    model = _model("longformer", window=32)
    state = torch.get_rng_state()
    a, b = (memory.saved_bytes(model, n, CPU, contextlib.nullcontext()) for n in (256, 512))
    assert 1.8 < b / a < 2.2  # a sliding window: linear in n
    assert torch.equal(torch.get_rng_state(), state)  # dropout drew from a forked RNG
    assert all(p.grad is None for p in model.parameters())


def test_the_estimate_is_the_measurement_at_short_lengths_and_grows_beyond():
    model = _model("longformer", window=32)
    trained = sum(p.numel() for p in model.parameters())
    short = memory.estimate(model, 300, 4, CPU, contextlib.nullcontext())
    assert short.per_sequence == memory.saved_bytes(model, 300, CPU, contextlib.nullcontext())
    assert short.need == memory.BACKWARD * 4 * short.per_sequence + memory.STATE_BYTES * trained
    long = memory.estimate(model, 4096, 4, CPU, contextlib.nullcontext())
    at_512 = memory.saved_bytes(model, 512, CPU, contextlib.nullcontext())
    assert long.per_sequence == pytest.approx(8 * at_512, rel=0.15)


_PEAK = """
import json, sys, torch
from longseq.bench.attention import reset_peak_rss, warm_up
from longseq.models import ModelConfig, build_model
torch.set_num_threads(1)
warm_up("cpu")
cfg = ModelConfig(**json.loads(sys.argv[1]))
model = build_model(cfg, seed=0).train()
ids = torch.randint(0, cfg.vocab_size, (2, int(sys.argv[2])))
grow = reset_peak_rss()
model(input_ids=ids).logits.sum().backward()
print(grow())
"""


@pytest.mark.parametrize("attention", ["longformer", "bigbird"])
def test_the_estimate_covers_a_measured_step_without_overshooting(attention):
    """Oracle: the resident set's growth over one forward+backward of 2 sequences of 2048
    tokens, in a fresh process (the gradients included, the optimiser not yet). The estimate
    lies within 0.8x-2x of it: far below would let a run the machine cannot hold start, far
    above would refuse runs that fit (measured here: 1.00x Longformer, 1.04x BigBird)."""
    opts = {"window": 128} if attention == "longformer" else {"block_size": 64}
    model = _model(attention, **opts)
    est = memory.estimate(model, 2048, 2, CPU, contextlib.nullcontext())
    cfg = model.config.to_dict() if hasattr(model.config, "to_dict") else vars(model.config)
    out = subprocess.run([sys.executable, "-c", _PEAK, json.dumps(cfg), "2048"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    peak = int(out.stdout.split()[-1])
    assert 0.8 * peak <= est.need <= 2 * peak, (peak, est.need)


def test_a_qa_model_that_finds_its_question_by_separator_is_measured():
    """A QA head with sep_token_id makes the question global when no mask is given; random
    ids have no separator, so the probe gives the global mask itself (as a QA batch does)."""
    cfg = ModelConfig(
        architecture="question-answering", attention="longformer", hidden_size=32,
        num_heads=2, num_layers=1, intermediate_size=32, max_length=64, sep_token_id=2,
        attention_options={"window": 8},
    )  # fmt: skip
    model = build_model(cfg, seed=0)
    with pytest.raises(ValueError, match="no separator"):
        model(input_ids=torch.full((1, 16), 5))
    assert memory.saved_bytes(model, 32, torch.device("cpu"), contextlib.nullcontext()) > 0
