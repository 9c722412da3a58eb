"""A mechanism added in one file plus a `register` call flows through everything: models and
heads, causal decoding through its cache, the trainer, `longseq compare` (options, pattern
reach, training, report, pictures), the benchmark and the pattern pictures. No code outside
its class names it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from longseq import attention
from longseq.attention import patterns
from longseq.attention.base import SelfAttention
from longseq.attention.cache import SlotCache


class StridedAttention(SelfAttention):
    """Test-only: query i sees keys j with |i - j| <= 1 or (i - j) % stride == 0 (and j <= i
    when causal): dense SDPA under that mask."""

    name = "test-strided"

    def __init__(self, hidden_size: int, num_heads: int, *, stride: int = 4, **kw: Any) -> None:
        super().__init__(hidden_size, num_heads, **kw)
        self.stride = stride

    @classmethod
    def options_at(cls, at: attention.At, given: dict[str, Any]) -> dict[str, Any]:
        # its own setting under a reach (no other mechanism's): the 3 neighbours + n/stride
        derived = {} if at.reach is None else {"stride": max(2, at.reach // 2)}
        return {**derived, **given}

    def _mod(self) -> Any:
        def mod(q: Tensor, k: Tensor) -> Tensor:
            d = q - k
            ok = (d.abs() <= 1) | (d % self.stride == 0)
            return ok & (d >= 0) if self.causal else ok

        return mod

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        return patterns.materialize(self._mod(), n).expand(self.num_heads, n, n)

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        q, k, v = self.project(hidden_states)
        n = q.shape[2]
        allowed = self.pattern(n)[0].to(q.device)[None, None] & real[:, None, None, :]
        allowed = allowed | torch.eye(n, dtype=torch.bool, device=q.device)  # padding rows
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=1.0)

    def new_cache(self) -> SlotCache:
        self._check_cacheable()
        return SlotCache(self._mod())


@pytest.fixture
def registered():
    attention.register(StridedAttention)
    yield StridedAttention.name
    attention.unregister(StridedAttention.name)


def test_models_and_cached_generation(registered):
    from longseq.models import ModelConfig, build_model
    from longseq.models.generation import cache_kind, generate

    cfg = ModelConfig(architecture="causal-lm", attention=registered, hidden_size=32,
                      num_heads=4, num_layers=2, max_length=64, init_std=0.3)  # fmt: skip
    model = build_model(cfg, seed=0).double().eval()
    prompt = torch.randint(4, 260, (1, 6))
    cached = generate(model, prompt, 12, output_logits=True)
    plain = generate(model, prompt, 12, use_cache=False, output_logits=True)
    assert cache_kind(model) == "kv" and torch.equal(cached.sequences, plain.sequences)
    for a, b in zip(cached.logits, plain.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for head in ("sequence-classification", "question-answering", "masked-lm"):
        m = build_model(ModelConfig(architecture=head, attention=registered, hidden_size=32,
                                    num_heads=4, num_layers=1, max_length=64))  # fmt: skip
        assert m(torch.randint(4, 260, (2, 20))) is not None


def test_trainer_compare_bench_and_pictures(registered, tmp_path: Path):
    from longseq.bench import attention as ba
    from longseq.compare import predict, presets, runner
    from longseq.viz import patterns as viz

    # compare: in the default set though registered after compare's import; options from the
    # class under the preset's reach (or given by name), reach from its pattern, a whole run
    assert registered in presets.default_mechanisms() and registered in ba.families()
    p = presets.get("recall")
    assert presets.mechanism_options(p, registered, 256) == {"stride": p.reach // 2}
    given = p.with_overrides([f"options.{registered}.stride=5"])
    assert presets.mechanism_options(given, registered, 256) == {"stride": 5}
    r = predict.reach(registered, {"stride": 4}, 24, num_layers=1, num_heads=2)
    assert r.low[10, 6] == 1 and r.low[10, 5] == 0 and r.high[10, 2] == 1
    tiny = dataclasses.replace(
        p, name="tiny", hidden_size=16, num_heads=2, intermediate_size=32, steps=2,
        batch_size=4, warmup_steps=1, eval_every=2, seeds=1, recall_length=48, recall_pairs=3,
        recall_keys=4, recall_values=3, recall_train=8, recall_val=4, recall_test=4, reach=8,
        sweep_lengths=(48,), sweep_repeats=1, sweep_max_seconds=30.0, threads=1,
    )  # fmt: skip
    plan = runner.Plan(out=tmp_path / "cmp", task="recall", preset=tiny,
                       mechanisms=["full", registered])  # fmt: skip
    summary = runner.run(plan, log=lambda _: None)
    assert summary.ok
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert registered in report
    assert (tmp_path / "cmp" / "patterns" / f"{registered}.png").is_file()
    # benchmark: a row with its default options
    rows = ba.select([registered], peers=False)
    assert [s.name for s in rows] == ["projections", "full", registered]
    # pictures: the generic one, its mask at the reach scaled to n (reach 4: stride 2)
    pic = attention.get(registered).picture(32)
    mask = StridedAttention(16, 2, stride=2).pattern(32)[0]
    assert pic.name == registered and [p.categories for p in pic.panels] == [{1: "scored"}] * 2
    assert (pic.panels[0].image == mask.long().numpy()).all()
    assert (pic.panels[1].image == mask.tril().long().numpy()).all()
    written = viz.draw_all(tmp_path / "pat", n=32, mechanisms=[registered])
    assert written[0].name == f"{registered}.png"
