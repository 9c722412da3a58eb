"""`longseq export --format hf`: the Hugging Face model equals the longseq one.

Oracles: HF -> longseq -> HF gives a transformers model of the same class whose outputs equal
the original's (and longseq's) within 1e-5, for every family and head; a model longseq built
(a longified MiniLM-like BERT with Longformer layers) exports to a folder that transformers'
`from_pretrained` loads with the same outputs; what no HF architecture computes is refused.
"""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
import test_llama  # noqa: E402
import test_parity  # noqa: E402
import test_reformer  # noqa: E402

from longseq.cli import main  # noqa: E402
from longseq.convert import from_huggingface, longify  # noqa: E402
from longseq.convert.to_hf import export_hf, hf_family, to_huggingface  # noqa: E402
from longseq.models import ModelConfig, build_model  # noqa: E402

TOL = 1e-5


@pytest.fixture(autouse=True)
def _quiet_and_small():
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)


def qa_inputs(hf, n: int = 50, lengths: tuple[int, ...] = (50, 37)) -> dict[str, torch.Tensor]:
    """A question of 5 tokens, <sep><sep>, the context, a final <sep> (HF's QA layout)."""
    batch = test_parity.inputs(hf, n, lengths)
    ids, sep = batch["input_ids"], getattr(hf.config, "sep_token_id", None) or 2
    ids[ids == sep] = sep + 1
    ids[:, [5, 6]] = sep
    ids[torch.arange(len(lengths)), torch.tensor(lengths) - 1] = sep
    return batch


HEADS = [*test_parity.HEADS, "ForQuestionAnswering"]
BIGBIRD_OWN = ("ForSequenceClassification", "ForQuestionAnswering")
BERT_CASES = [(f, h) for f in test_parity.FAMILIES for h in HEADS]


@pytest.mark.parametrize(("family", "head"), BERT_CASES)
def test_round_trip_bert_families(family: str, head: str) -> None:
    hf = test_parity.hf_model(family, head, **({"num_labels": 2} if "Answering" in head else {}))
    back = to_huggingface(from_huggingface(hf))
    # the same computation under another name: XLM-RoBERTa is a RoBERTa; a BigBird with full
    # attention and no head of BigBird's own is a BERT
    expected = {"xlm-roberta": "Roberta", "bigbird-full": "Bert"}.get(family)
    if expected is None or (family == "bigbird-full" and head in BIGBIRD_OWN):
        assert type(back) is type(hf)
    else:
        assert type(back).__name__ == expected + head
    batch = qa_inputs(hf) if "Answering" in head else test_parity.inputs(hf)
    assert test_parity.max_diff(hf, back, head, batch) < TOL


@pytest.mark.parametrize("case", list(test_reformer.CASES))
def test_round_trip_reformer(case: str) -> None:
    hf = test_reformer.hf_model(case)
    back = to_huggingface(from_huggingface(hf))
    assert type(back) is type(hf)
    for n in (64, 40):
        assert test_reformer.max_diff(hf, back, test_reformer.batch(n)) < TOL


@pytest.mark.parametrize("head", ["ForCausalLM", "Model"])
def test_round_trip_llama(head: str) -> None:
    hf = test_llama.hf_llama(head, tie_word_embeddings=head == "Model")
    back = to_huggingface(from_huggingface(hf))
    assert type(back) is type(hf)
    assert test_llama.max_diff(hf, back, test_llama.batch()) < TOL


def test_longified_bert_is_a_longformer_folder(tmp_path) -> None:
    """A MiniLM-like BERT longified to Longformer: an HF LongformerModel folder that
    from_pretrained loads, equal to longseq's model with and without global tokens."""
    short = from_huggingface(test_parity.hf_model("bert", "Model"))
    long = longify(short, max_length=256, attention="longformer", window=8)
    assert hf_family(long.config) == "longformer"
    export_hf(long, tmp_path / "hf")
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    assert type(hf).__name__ == "LongformerModel"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["attention_window"] == [8, 8]
    batch = test_parity.inputs(hf, n=200, lengths=(200, 130))
    glob = torch.zeros_like(batch["input_ids"])
    glob[:, [0, 17]] = 1
    for extra in ({}, {"global_attention_mask": glob}):
        with torch.no_grad():
            a, b = hf(**batch, **extra), long(**batch, **extra)
        real = batch["attention_mask"].bool()
        assert (a.last_hidden_state - b.last_hidden_state)[real].abs().max() < TOL


def test_cli_writes_a_folder_transformers_loads(tmp_path) -> None:
    hf = test_parity.hf_model("roberta", "ForSequenceClassification")
    ours = from_huggingface(hf)
    ours.save_pretrained(tmp_path / "model")
    assert main(["export", str(tmp_path / "model"), str(tmp_path / "out"), "--format", "hf"]) == 0
    back = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert type(back).__name__ == "RobertaForSequenceClassification"
    assert (
        test_parity.max_diff(hf, back.eval(), "ForSequenceClassification", test_parity.inputs(hf))
        < TOL
    )
    assert (tmp_path / "out" / "model.safetensors").is_file()


def tiny(**changes) -> ModelConfig:
    base = dict(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=24)
    return ModelConfig(**{**base, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention": "linformer"}, "no Linformer"),
        ({"attention": "bigbird"}, "own random blocks"),
        (
            {
                "attention": "lsh",
                "position": "axial",
                "axial_shape": [64, 64],
                "axial_dims": [8, 8],
            },
            "lsh-hf",
        ),
        (
            {"attention": "longformer", "layer_attention": [{}, {"attention": "full"}]},
            "mix mechanisms",
        ),
        ({"attention": "full"}, r"norm='pre' \(needs 'post'\)"),
        (
            {"attention": "longformer", "architecture": "causal-lm", "global_tokens": 2},
            "attention sinks",
        ),
        (
            {
                "attention": "longformer",
                "norm": "post",
                "embedding_norm": True,
                "attention_options": {"window": 4, "dilation": 2},
            },
            "no dilation",
        ),
    ],
)
def test_what_no_hf_architecture_computes_is_refused(changes, message, tmp_path) -> None:
    model = build_model(tiny(**changes))
    with pytest.raises(ValueError, match=message):
        to_huggingface(model)
    model.save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "out"), "--format", "hf"]) == 2
    assert not (tmp_path / "out").exists()


def test_export_check_catches_a_wrong_model() -> None:
    """The self-check can fail: a BERT whose HF twin is given a different layer norm eps."""
    model = from_huggingface(test_parity.hf_model("bert", "Model"))
    model.config = model.config.replace(layer_norm_eps=0.5)
    with pytest.raises(ValueError, match="differs from the model"):
        to_huggingface(model)
