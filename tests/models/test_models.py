"""Models: every mechanism under every head; save/load, reversible and checkpointing oracles."""

from __future__ import annotations

import json

import pytest
import torch

from longseq.models import (
    ARCHITECTURES,
    ForCausalLM,
    ForSequenceClassification,
    ModelConfig,
    build_model,
    from_pretrained,
)

# Small options per mechanism so that a 64-token input exercises the sparse path.
MECH = {
    "full": {},
    "longformer": {"window": 8},
    "bigbird": {"block_size": 8, "num_random_blocks": 1},
    "linformer": {"k": 16},
    "lsh": {"chunk_length": 8, "num_buckets": 4},
}
N = 64


def config(attention: str = "full", **kw) -> ModelConfig:
    base = dict(
        attention=attention,
        attention_options=MECH.get(attention, {}),
        hidden_size=32,
        num_heads=4,
        num_layers=2,
        intermediate_size=64,
        max_length=128,
        dropout=0.0,
        position="axial" if attention == "lsh" else "learned",
        axial_shape=[8, 16],
        axial_dims=[16, 16],
    )
    base.update(kw)
    return ModelConfig(**base)


def inputs(batch: int = 2, n: int = N, pad: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, 260, (batch, n))
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[-1, n - pad :] = 0
    ids[-1, n - pad :] = 0
    return ids, mask


def test_config_json_round_trip(tmp_path):
    c = config(
        "longformer",
        layer_attention=[{"window": 4}, {"attention": "full"}],
        num_labels=3,
        label_names=["a", "b", "c"],
        architecture="sequence-classification",
    )
    c.save(tmp_path / "c.json")
    back = ModelConfig.load(tmp_path / "c.json")
    assert back == c
    assert back.layer_spec(0) == ("longformer", {"window": 4})
    assert back.layer_spec(1) == ("full", {})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention": "nope"}, "valid names"),
        ({"attention_options": {"windw": 3}, "attention": "longformer"}, "unknown option"),
        ({"attention_options": {"causal": True}}, "set by the model config"),
        (
            {"architecture": "causal-lm", "attention": "linformer", "attention_options": {}},
            "no causal form",
        ),
        ({"reversible": True, "norm": "post"}, "norm='pre'"),
        ({"hidden_size": 30}, "divisible"),
        ({"position": "axial", "axial_shape": [4, 4]}, "max_length"),
        ({"layer_attention": [{}]}, "num_layers"),
        ({"architecture": "classify"}, "valid"),
        ({"num_labels": 2, "label_names": ["x"]}, "label_names"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        config(**changes)


def test_config_unknown_json_field():
    with pytest.raises(ValueError, match="unknown model config field"):
        ModelConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="not valid JSON"):
        ModelConfig.from_json("{")


@pytest.mark.parametrize("attention", list(MECH))
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_head_every_mechanism_save_load(attention, arch, tmp_path):
    if arch == "causal-lm" and attention == "linformer":
        pytest.skip("linformer has no causal form (config rejects it)")
    model = build_model(config(attention, architecture=arch), seed=1).eval()
    ids, mask = inputs()
    out = model(ids, mask)
    width = model.config.output_size
    expected = {
        "encoder": (2, N, width),
        "sequence-classification": (2, 2),
        "token-classification": (2, N, 2),
        "question-answering": (2, N, 2),
        "masked-lm": (2, N, 260),
        "causal-lm": (2, N, 260),
    }[arch]
    got = out.last_hidden_state if arch == "encoder" else out.logits
    assert tuple(got.shape) == expected
    assert torch.isfinite(got).all()
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    again = loaded(ids, mask)
    torch.testing.assert_close(
        again.last_hidden_state if arch == "encoder" else again.logits, got, rtol=0, atol=0
    )


@pytest.mark.parametrize("attention", list(MECH))
def test_batch_with_padding_equals_alone(attention):
    model = build_model(config(attention, architecture="sequence-classification"), seed=2).eval()
    ids, mask = inputs(pad=24)
    batch = model(ids, mask).logits
    alone = model(ids[-1:, : N - 24]).logits
    torch.testing.assert_close(batch[-1:], alone, atol=1e-5, rtol=1e-5)


# Not LSH: a causal LSH query never scores a later key, but *which* earlier keys share its
# sorted chunk depends on where later tokens hash (true of Reformer itself; docs/models.md).
@pytest.mark.parametrize("attention", ["full", "longformer", "bigbird"])
def test_causal_lm_never_looks_ahead(attention):
    model = build_model(config(attention, architecture="causal-lm"), seed=3).eval()
    ids, _ = inputs(batch=1, pad=0)
    changed = ids.clone()
    changed[0, 40:] = torch.randint(4, 260, (N - 40,))
    a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :40], b[:, :40], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 40:], b[:, 40:])


def test_causal_lm_loss_is_shifted_cross_entropy():
    model = build_model(config(architecture="causal-lm"), seed=4).eval()
    ids, mask = inputs()
    out = model(ids, mask, labels=ids)
    logits = out.logits[:, :-1]
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    expected = torch.nn.functional.cross_entropy(
        logits.reshape(-1, 260), target.reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize("attention", ["full", "longformer", "lsh"])
def test_reversible_gradients_equal_plain_stack(attention):
    # Same parameter names either way, so one state dict serves both models.
    rev = build_model(config(attention, architecture="masked-lm", reversible=True), seed=5)
    plain = build_model(config(attention, architecture="masked-lm", reversible=True), seed=5)
    plain.body._reversible[0].reversible = False  # same formulas under plain autograd
    rev, plain = rev.double(), plain.double()
    ids, mask = inputs()
    labels = ids.masked_fill(mask == 0, -100)
    for m in (rev, plain):
        m(ids, mask, labels=labels).loss.backward()
    for (name, p), q in zip(rev.named_parameters(), plain.parameters(), strict=True):
        if q.grad is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        torch.testing.assert_close(p.grad, q.grad, atol=1e-9, rtol=1e-7, msg=name)


def test_gradient_checkpointing_same_gradients():
    a = build_model(config("longformer", architecture="causal-lm", dropout=0.1), seed=6).train()
    b = build_model(
        config("longformer", architecture="causal-lm", dropout=0.1, gradient_checkpointing=True),
        seed=6,
    ).train()
    ids, mask = inputs()
    for m in (a, b):
        torch.manual_seed(9)
        m(ids, mask, labels=ids).loss.backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_rotary_positions_change_outputs_and_save_load(tmp_path):
    model = build_model(config("longformer", position="rotary", architecture="encoder"), seed=7)
    model.eval()
    ids, mask = inputs()
    out = model(ids, mask).last_hidden_state
    assert model.body.layers[0].attn.attention.rotary is not None
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(from_pretrained(tmp_path)(ids, mask).last_hidden_state, out)
    for block in model.body.layers:
        block.attn.attention.rotary = None
    assert not torch.allclose(model(ids, mask).last_hidden_state, out)


def test_longformer_classifier_makes_first_token_global():
    model = build_model(config("longformer", architecture="sequence-classification"), seed=8)
    model.eval()
    ids, mask = inputs()
    auto = model(ids, mask).logits
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    torch.testing.assert_close(model(ids, mask, global_attention_mask=glob).logits, auto)
    none = model(ids, mask, global_attention_mask=torch.zeros_like(ids)).logits
    assert not torch.allclose(none, auto)


def test_tied_weights_stored_once(tmp_path):
    from safetensors.torch import load_file

    model = build_model(config(architecture="causal-lm"), seed=9)
    assert model.lm_head.decoder.weight is model.body.embeddings.word.weight
    model.save_pretrained(tmp_path)
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "body.embeddings.word.weight" in keys
    assert "lm_head.decoder.weight" not in keys
    loaded = from_pretrained(tmp_path)
    assert loaded.lm_head.decoder.weight is loaded.body.embeddings.word.weight


def test_switch_head_keeps_body(tmp_path):
    lm = build_model(config(architecture="masked-lm"), seed=10).eval()
    lm.save_pretrained(tmp_path)
    clf = from_pretrained(tmp_path, architecture="sequence-classification")
    assert isinstance(clf, ForSequenceClassification)
    ids, mask = inputs()
    torch.testing.assert_close(clf.body(ids, mask)[0], lm.body(ids, mask)[0], rtol=0, atol=0)


def test_load_errors(tmp_path):
    model = build_model(config(), seed=11)
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model folder"):
        from_pretrained(tmp_path / "missing")
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        from_pretrained(tmp_path)
    weights.write_bytes(good)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shapes do not match"):
        from_pretrained(tmp_path)
    cfg["intermediate_size"] = 64
    cfg["num_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing"):
        from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        from_pretrained(tmp_path)


def test_bad_inputs():
    model = build_model(config("full", architecture="sequence-classification"), seed=12)
    ids, mask = inputs()
    with pytest.raises(ValueError, match="max_length=128"):
        model(torch.randint(4, 260, (1, 129)))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.full((1, 8), 260))
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        model(ids[0])
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(ids, mask[:, :-1])
    with pytest.raises(
        ValueError, match=r"no layer of this model has global.*layers that take one: longformer$"
    ):
        model(ids, mask, global_attention_mask=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="labels must lie"):
        model(ids, mask, labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="labels shape"):
        model(ids, mask, labels=torch.tensor([0]))
    with pytest.raises(ValueError, match="integer token ids"):
        model(ids.float())


def test_empty_row_mask_rejected():
    model = build_model(config("longformer"), seed=13)
    ids, mask = inputs()
    mask[0] = 0
    with pytest.raises(ValueError, match=r"no real token in sequence\(s\) \[0\]"):
        model(ids, mask)


def test_pad_multiple():
    assert build_model(config("bigbird")).pad_multiple() == 8
    assert build_model(config("full")).pad_multiple() == 1
    assert isinstance(build_model(config(architecture="causal-lm")), ForCausalLM)


def test_mixed_mechanisms_per_layer_take_the_global_mask():
    c = config(
        "longformer",
        architecture="sequence-classification",
        layer_attention=[{"attention": "full"}, {"window": 4}],
    )
    model = build_model(c, seed=14).eval()
    assert [type(b.attn.attention).__name__ for b in model.body.layers] == [
        "FullAttention",
        "LongformerAttention",
    ]
    ids, mask = inputs()
    glob = torch.zeros_like(ids)
    glob[:, :3] = 1
    assert torch.isfinite(model(ids, mask, global_attention_mask=glob).logits).all()
