"""The CUDA path, against the CPU as the oracle (skipped where there is no GPU; CI has none).

Every attention configuration of tests/attention/cases.py gives the same outputs and the same
gradients on the GPU as on the CPU (fp64, so only the summation order differs); a model trains
on the GPU in bf16 and fp16 (autocast, with a GradScaler for fp16) with finite, falling loss and
resumes from its checkpoint there; cached generation on the GPU equals the uncached forward.
"""

from __future__ import annotations

import pytest
import torch
from cases import HEADS, HIDDEN, all_cases, case_id

from longseq import attention
from longseq.models import ModelConfig, build_model
from longseq.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")


def _inputs(
    name: str, causal: bool, n: int = 24
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, n, HIDDEN, generator=g, dtype=torch.float64)
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, n - 5 :] = 0  # a padded row
    glob = None
    if attention.get(name).supports_global and not causal:
        glob = torch.zeros(2, n, dtype=torch.long)
        glob[:, 0] = 1
    return x, mask, glob


@pytest.mark.parametrize("case", all_cases(), ids=case_id)
def test_attention_on_cuda_equals_cpu(case):
    name, opts = case
    cpu = attention.build(name, HIDDEN, HEADS, **opts).double().eval()
    gpu = attention.build(name, HIDDEN, HEADS, **opts).double().eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(CUDA)
    x, mask, glob = _inputs(name, opts.get("causal", False))
    outs, grads = [], []
    for layer, dev in ((cpu, torch.device("cpu")), (gpu, CUDA)):
        xi = x.detach().to(dev).requires_grad_(True)
        out = layer(xi, mask.to(dev), None if glob is None else glob.to(dev))
        out.square().sum().backward()
        outs.append(out.detach().cpu())
        named = {k: p.grad.cpu() for k, p in layer.named_parameters() if p.grad is not None}
        grads.append({"input": xi.grad.cpu(), **named})
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-9, atol=1e-10)
    assert grads[1].keys() == grads[0].keys()
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-8, atol=1e-10, msg=k)


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize(
    "mechanism", ["full", "longformer", "bigbird", "linformer", "lsh", "lsh-reversible"]
)
def test_training_on_cuda(tmp_path, precision, mechanism):
    mechanism, _, reversible = mechanism.partition("-")
    rng = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(64):  # label = first digit: learnable in a few steps
        digits = torch.randint(0, 10, (40,), generator=rng).tolist()
        lines.append(" ".join(map(str, digits)) + f"\t{digits[0]}")
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.tsv").write_text("Source\tTarget\n" + "\n".join(lines) + "\n")
    options = {
        "longformer": {"window": 8},
        "bigbird": {"block_size": 4, "num_random_blocks": 1},
        "linformer": {"k": 16, "max_seq_len": 64},
        "lsh": {"chunk_length": 8, "n_hashes": 2},
    }.get(mechanism, {})

    def config() -> TrainConfig:
        return TrainConfig(
            model={
                "hidden_size": 32,
                "num_layers": 2,
                "num_heads": 2,
                "intermediate_size": 64,
                "attention": mechanism,
                "attention_options": options,
                "reversible": bool(reversible),
            },
            data={
                "task": "listops",
                **{s: str(tmp_path / f"{s}.tsv") for s in ("train", "val", "test")},
                "max_length": 64,
                "batch_size": 16,
            },
            optim={"lr": 3e-3, "max_steps": 20, "warmup_steps": 2},
            run={
                "out": str(tmp_path / "run"),
                "eval_every": 10,
                "save_every": 10,
                "progress": False,
                "tensorboard": False,
                "device": "cuda",
                "precision": precision,
            },
        )

    class Crash(Exception):
        pass

    def crash(event):
        if event["kind"] == "step" and event["step"] == 13:
            raise Crash

    with pytest.raises(Crash):
        train(config(), callbacks=[crash])
    resumed = train(config(), resume=True)
    assert next(resumed.model.parameters()).device.type == "cuda"
    assert resumed.peak_memory_bytes and resumed.peak_memory_bytes > 0
    assert resumed.step == 20
    losses = [e["loss"] for e in resumed.evals]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 2.3  # below ln(10): it learned something


@pytest.mark.parametrize(
    "attn",
    [
        {},
        {"attention": "longformer", "attention_options": {"window": 4}},
        {"attention": "bigbird", "attention_options": {"block_size": 2, "num_global_blocks": 1}},
        {"attention": "lsh", "attention_options": {"chunk_length": 4, "num_buckets": 4}},
        {"attention": "local", "attention_options": {"chunk_length": 4}},
    ],
)
def test_cached_generation_on_cuda_equals_forward(attn):
    cfg = ModelConfig(
        architecture="causal-lm",
        hidden_size=32,
        num_heads=4,
        num_layers=2,
        intermediate_size=64,
        max_length=64,
        dropout=0.0,
        init_std=0.3,
        **attn,
    )
    model = build_model(cfg, seed=0).double().to(CUDA).eval()
    seq = torch.randint(4, 260, (1, 20), device=CUDA)
    cache = model.new_cache(1)
    with torch.no_grad():
        logits = model(seq[:, :8], cache=cache).logits[:, -1]
        for t in range(8, 20):
            full = model(seq[:, :t]).logits[:, -1]
            torch.testing.assert_close(logits, full, rtol=1e-9, atol=1e-9)
            logits = model(seq[:, t : t + 1], cache=cache).logits[:, -1]
    out = model.generate(seq[:, :5], max_new_tokens=6)
    assert out.cache in ("kv", "ring", "lsh")
    assert out.sequences.shape == (1, 11) and out.sequences.device.type == "cuda"
