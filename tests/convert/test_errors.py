"""Bad inputs to the conversion get errors that say what is supported or what is wrong."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
from longseq.convert import SUPPORTED, from_huggingface  # noqa: E402

SIZES = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
)


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)


def save_bert(tmp_path, cls=None):
    model = (cls or transformers.BertForMaskedLM)(transformers.BertConfig(**SIZES))
    model.save_pretrained(tmp_path)
    return tmp_path


def edit_config(folder, **changes) -> None:
    file = folder / "config.json"
    file.write_text(json.dumps({**json.loads(file.read_text()), **changes}))


def test_unsupported_model_type_lists_the_supported_ones() -> None:
    config = transformers.DistilBertConfig(vocab_size=99, dim=32, n_layers=1, n_heads=4)
    with pytest.raises(ValueError, match="distilbert") as e:
        from_huggingface(transformers.DistilBertModel(config))
    for name in SUPPORTED:
        assert name in str(e.value)


def test_unsupported_head_lists_the_supported_heads() -> None:
    model = transformers.BertForMultipleChoice(transformers.BertConfig(**SIZES))
    with pytest.raises(ValueError, match="ForSequenceClassification"):
        from_huggingface(model)


def test_bigbird_question_answering_without_a_separator_is_refused() -> None:
    """BigBird QA finds the question by sep_token_id (converted otherwise: test_parity)."""
    config = transformers.BigBirdConfig(**SIZES, block_size=4, num_random_blocks=1)
    model = transformers.BigBirdForQuestionAnswering(config)
    model.config.sep_token_id = None
    with pytest.raises(ValueError, match="sep_token_id"):
        from_huggingface(model)


def test_not_a_model() -> None:
    with pytest.raises(ValueError, match="transformers model or the path"):
        from_huggingface(42)  # type: ignore[arg-type]


def test_in_memory_config_that_does_not_match_the_weights() -> None:
    model = transformers.BertModel(transformers.BertConfig(**SIZES))
    model.config.intermediate_size = 48
    with pytest.raises(ValueError, match=r"intermediate.dense.weight: weights \(37, 32\)"):
        from_huggingface(model)


def test_missing_folder_and_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        from_huggingface(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        from_huggingface(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors"):
        from_huggingface(tmp_path)


def test_folder_of_unsupported_type(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="'gpt2' is not supported; supported: bert"):
        from_huggingface(tmp_path)


def test_folder_config_shapes_differ_from_weights(tmp_path) -> None:
    edit_config(save_bert(tmp_path), hidden_size=64)
    with pytest.raises(ValueError, match=r"word_embeddings.weight: weights \(99, 32\) vs config"):
        from_huggingface(tmp_path)


def test_folder_config_with_more_layers_than_weights(tmp_path) -> None:
    edit_config(save_bert(tmp_path), num_hidden_layers=3)
    with pytest.raises(ValueError, match=r"lack.*encoder.layer.2"):
        from_huggingface(tmp_path)


def test_folder_round_trip_and_pretraining_class(tmp_path) -> None:
    """A BERT pre-training checkpoint (MLM + next-sentence heads) converts as masked LM."""
    hf = transformers.BertForPreTraining(transformers.BertConfig(**SIZES)).eval()
    hf.save_pretrained(tmp_path)
    ours = from_huggingface(tmp_path)
    assert ours.config.architecture == "masked-lm"
    ids = torch.randint(3, 99, (1, 20))
    with torch.no_grad():
        diff = (hf(input_ids=ids).prediction_logits - ours(ids).logits).abs().max()
    assert diff < 1e-5
