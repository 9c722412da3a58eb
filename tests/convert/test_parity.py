"""Converted models give the Hugging Face model's outputs (fp32, eval, within 1e-5).

Oracle: the transformers model itself, built from a small random config of each family (no
download), with a larger init (0.3) than usual so that attention is far from uniform and every
weight matters. Inputs have right padding and, for Longformer, global tokens.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from longseq.convert import from_huggingface  # noqa: E402
from longseq.models import build_model  # noqa: E402

TOL = 1e-5
SIZES = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=128,
    initializer_range=0.3,
    num_labels=3,
)
FAMILIES = {
    "bert": ("Bert", lambda: transformers.BertConfig(**SIZES)),
    "roberta": ("Roberta", lambda: transformers.RobertaConfig(**SIZES)),
    "xlm-roberta": ("XLMRoberta", lambda: transformers.XLMRobertaConfig(**SIZES)),
    "longformer": (
        "Longformer",
        lambda: transformers.LongformerConfig(**SIZES, attention_window=[4, 8]),
    ),
    "bigbird-sparse": (
        "BigBird",
        lambda: transformers.BigBirdConfig(**SIZES, block_size=4, num_random_blocks=2),
    ),
    "bigbird-full": (
        "BigBird",
        lambda: transformers.BigBirdConfig(**SIZES, attention_type="original_full"),
    ),
}
HEADS = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification"]
CASES = [(f, h) for f in FAMILIES for h in [*HEADS, "ForQuestionAnswering"]]


@pytest.fixture(autouse=True)
def _quiet_and_small():
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)  # tiny models: a second thread only spins on a busy machine


def hf_model(family: str, head: str, **changes):
    prefix, make = FAMILIES[family]
    config = make()
    for k, v in changes.items():
        setattr(config, k, v)
    torch.manual_seed(0)
    return getattr(transformers, prefix + head)(config).eval()


def inputs(hf, n: int = 50, lengths: tuple[int, ...] = (50, 37)) -> dict[str, torch.Tensor]:
    """Right-padded ids (real tokens never the pad id) and the attention mask."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, hf.config.vocab_size, (len(lengths), n), generator=g)
    mask = (torch.arange(n) < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, hf.config.pad_token_id), "attention_mask": mask}


def max_diff(hf, ours, head: str, batch: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        a, b = hf(**batch), ours(**batch)
    real = batch["attention_mask"].bool()
    if head == "Model":
        return (a.last_hidden_state - b.last_hidden_state)[real].abs().max().item()
    if head == "ForSequenceClassification":
        return (a.logits - b.logits).abs().max().item()
    if head == "ForQuestionAnswering":
        start = (a.start_logits - b.start_logits)[real].abs().max()
        return max(start, (a.end_logits - b.end_logits)[real].abs().max()).item()
    return (a.logits - b.logits)[real].abs().max().item()


@pytest.mark.parametrize(("family", "head"), CASES)
def test_outputs_match_hugging_face(family: str, head: str) -> None:
    hf = hf_model(family, head, **({"num_labels": 2} if head.endswith("Answering") else {}))
    ours = from_huggingface(hf)
    assert not ours.training
    batch = inputs(hf)
    if family == "longformer":
        glob = torch.zeros_like(batch["input_ids"])
        glob[:, 0] = 1
        glob[0, [10, 41]] = 1
        batch["global_attention_mask"] = glob
    if family == "bert":  # segment embeddings: second half is segment 1
        batch["token_type_ids"] = (torch.arange(50) >= 25).long().expand(2, -1)
    assert max_diff(hf, ours, head, batch) < TOL


def test_longformer_classification_makes_the_first_token_global_as_hf() -> None:
    hf = hf_model("longformer", "ForSequenceClassification")
    assert max_diff(hf, from_huggingface(hf), "ForSequenceClassification", inputs(hf)) < TOL


def qa_batch(hf, n: int = 50, lengths: tuple[int, ...] = (50, 37)) -> dict[str, torch.Tensor]:
    """A question of 5 tokens, <sep><sep>, the context, a final <sep>: the layout HF's
    Longformer QA requires (exactly three separators) and BigBird's QA reads (the first)."""
    batch = inputs(hf, n, lengths)
    ids, sep = batch["input_ids"], hf.config.sep_token_id
    ids[ids == sep] = sep + 1
    ids[:, [5, 6]] = sep
    ids[torch.arange(len(lengths)), torch.tensor(lengths) - 1] = sep
    return batch


def test_longformer_qa_makes_the_question_global_as_hf() -> None:
    """No global_attention_mask: HF makes the tokens before the first separator global, and
    so does the converted model (sep_token_id from the config)."""
    hf = hf_model("longformer", "ForQuestionAnswering", num_labels=2)
    ours = from_huggingface(hf)
    assert ours.config.sep_token_id == hf.config.sep_token_id
    batch = qa_batch(hf)
    assert max_diff(hf, ours, "ForQuestionAnswering", batch) < TOL
    first_token_only = ours.config.replace(sep_token_id=None)  # control: the old rule differs
    control = build_model(first_token_only)
    control.load_state_dict(ours.state_dict())
    assert max_diff(hf, control.eval(), "ForQuestionAnswering", batch) > 1e-3


@pytest.mark.parametrize("family", ["bigbird-sparse", "bigbird-full"])
def test_bigbird_qa_masks_the_question_as_hf(family: str) -> None:
    """BigBirdForQuestionAnswering: its extra block, the question's logits at -1e6 and the
    segment ids it derives (question 0, context 1), with the separators in place."""
    hf = hf_model(family, "ForQuestionAnswering", num_labels=2)
    with torch.no_grad():  # segment 1 must differ from 0 for the derived ids to matter
        hf.bert.embeddings.token_type_embeddings.weight.normal_(std=0.3)
    ours = from_huggingface(hf)
    assert ours.config.qa_head == "bigbird"
    batch = qa_batch(hf)
    real = batch["attention_mask"].bool()
    question = torch.zeros_like(real)
    question[:, 1:6] = True
    with torch.no_grad():
        a, b = hf(**batch), ours(**batch)
    answer = real & ~question
    for x, y in ((a.start_logits, b.start_logits), (a.end_logits, b.end_logits)):
        # relative to the largest logit (about 10 here: float32 rounding near 1e-6 of it)
        assert (x - y)[answer].abs().max() < TOL * max(1.0, float(x[answer].abs().max()))
        assert (x[question] < -1e5).all() and (y[question] < -1e5).all()


def test_longformer_one_window_for_all_layers() -> None:
    hf = hf_model("longformer", "Model", attention_window=6)
    ours = from_huggingface(hf)
    assert ours.config.layer_attention is None
    assert ours.config.attention_options == {"window": 6}
    assert max_diff(hf, ours, "Model", inputs(hf, n=23, lengths=(23, 9))) < TOL


def test_bigbird_short_input_uses_full_attention_as_hf() -> None:
    """n <= (5 + 2r) * block_size: HF switches to original_full, and so does bigbird-hf."""
    hf = hf_model("bigbird-sparse", "Model")
    ours = from_huggingface(hf)
    batch = inputs(hf, n=30, lengths=(30, 17))
    assert max_diff(hf, ours, "Model", batch) < TOL
    assert hf.attention_type == "original_full"  # HF really switched (and stays switched)


def test_bigbird_parity_needs_hf_draws() -> None:
    """Control: longseq's own random blocks give a different model, so the test above and the
    parity cases can tell the two apart (the sequence is long enough for block-sparse)."""
    hf = hf_model("bigbird-sparse", "Model")
    ours = from_huggingface(hf)
    assert ours.config.attention == "bigbird-hf"
    seeded = build_model(ours.config.replace(attention="bigbird"))
    seeded.load_state_dict(ours.state_dict())
    batch = inputs(hf)
    assert max_diff(hf, ours, "Model", batch) < TOL
    assert max_diff(hf, seeded.eval(), "Model", batch) > 1e-2
    assert hf.attention_type == "block_sparse"


def test_untied_lm_decoder_is_copied() -> None:
    hf = hf_model("roberta", "ForMaskedLM", tie_word_embeddings=False)
    with torch.no_grad():
        hf.lm_head.decoder.weight.normal_(std=0.3)
    ours = from_huggingface(hf)
    assert not ours.config.tie_word_embeddings
    assert max_diff(hf, ours, "ForMaskedLM", inputs(hf)) < TOL


def test_converted_model_saves_and_loads_with_longseq(tmp_path) -> None:
    from longseq.models import from_pretrained

    hf = hf_model("longformer", "ForMaskedLM")
    ours = from_huggingface(hf)
    ours.save_pretrained(tmp_path)
    again = from_pretrained(tmp_path)
    batch = inputs(hf)
    with torch.no_grad():
        assert torch.equal(ours(**batch).logits, again(**batch).logits)
