"""Tokenizers: byte-level round trip and layout, Hugging Face tokenizer.json wrapping, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from longseq.data.tokenizers import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer

SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog",
    "long sequences need sparse attention",
]


def word_level(path: Path, specials: list[str]) -> Path:
    """A tiny WordLevel tokenizer.json trained on SENTENCES (an independent HF artefact)."""
    tok = RawTokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


def byte_bpe(path: Path, specials: list[str]) -> Path:
    """A tiny byte-level BPE tokenizer.json (RoBERTa / GPT-2 style)."""
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(SENTENCES, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    return path / "tokenizer.json"


# ----------------------------------------------------------------------------- byte
@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_round_trip_and_layout(text: str) -> None:
    tok = ByteTokenizer()
    ids = tok.encode(text)
    raw = text.encode("utf-8")
    assert ids == [b + 4 for b in raw]  # one id per UTF-8 byte, past the 4 specials
    assert all(4 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    # specials anywhere are dropped by decode
    assert tok.decode([tok.cls_id, *ids, tok.sep_id, tok.pad_id, tok.mask_id]) == text


def test_byte_specials_and_invalid_utf8() -> None:
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.vocab_size) == (0, 1, 2, 3, 260)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert isinstance(tok, Tokenizer)
    # a lone continuation byte is not UTF-8: replaced, not an exception
    assert tok.decode([0x80 + 4, ord("a") + 4]) == "\ufffda"


def test_byte_save_load(tmp_path: Path) -> None:
    ByteTokenizer().save(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text()) == {"type": "byte"}
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert isinstance(load_tokenizer(None), ByteTokenizer)


# ----------------------------------------------------------------------------- HF
def test_hf_word_level_specials_round_trip(tmp_path: Path) -> None:
    file = word_level(tmp_path / "src", ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]"])
    raw = RawTokenizer.from_file(str(file))
    tok = HFTokenizer(file)
    assert tok.pad_id == raw.token_to_id("[PAD]")
    assert tok.cls_id == raw.token_to_id("[CLS]")
    assert tok.sep_id == raw.token_to_id("[SEP]")
    assert tok.mask_id == raw.token_to_id("[MASK]")
    assert tok.vocab_size == raw.get_vocab_size()
    text = "the cat sat on the log"
    ids = tok.encode(text)
    assert ids == raw.encode(text).ids and len(ids) == 6
    assert tok.decode([tok.cls_id, *ids, tok.sep_id]) == text
    # unknown words map to [UNK], which is not one of the four roles
    assert tok.encode("zebra") == [raw.token_to_id("[UNK]")]

    tok.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").read_bytes() == file.read_bytes()
    again = load_tokenizer(tmp_path / "saved")
    assert isinstance(again, HFTokenizer)
    assert (again.pad_id, again.cls_id, again.sep_id, again.mask_id) == (
        tok.pad_id,
        tok.cls_id,
        tok.sep_id,
        tok.mask_id,
    )
    assert again.encode(text) == ids
    assert isinstance(load_tokenizer(file), HFTokenizer)  # the file itself


def test_hf_byte_bpe_roberta_style(tmp_path: Path) -> None:
    file = byte_bpe(tmp_path, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    raw = RawTokenizer.from_file(str(file))
    tok = load_tokenizer(tmp_path)
    assert (tok.cls_id, tok.pad_id, tok.sep_id, tok.mask_id) == tuple(
        raw.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<mask>")
    )
    text = "the cat and the dog\nzebra ünïcode"  # unseen words still round-trip (byte level)
    assert tok.decode(tok.encode(text)) == text


def test_hf_gpt2_style_falls_back_to_end_token(tmp_path: Path) -> None:
    file = byte_bpe(tmp_path, ["<|endoftext|>"])
    eot = RawTokenizer.from_file(str(file)).token_to_id("<|endoftext|>")
    tok = HFTokenizer(file)
    assert tok.pad_id == tok.cls_id == tok.sep_id == eot
    assert tok.mask_id is None


def test_hf_config_hints_and_overrides(tmp_path: Path) -> None:
    word_level(tmp_path, ["[UNK]", "[PAD]", "[CLS]", "[SEP]", "[MASK]", "<p>"])
    # transformers writes AddedToken dicts; they name the pad token here
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": {"content": "<p>"}}))
    tok = load_tokenizer(tmp_path)
    raw = RawTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.pad_id == raw.token_to_id("<p>")
    assert HFTokenizer(tmp_path, {"pad": "[PAD]"}).pad_id == raw.token_to_id("[PAD]")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer(tmp_path, {"mask": "<nope>"})
    with pytest.raises(ValueError, match="unknown special-token role"):
        HFTokenizer(tmp_path, {"bogus": "[PAD]"})


def test_hf_without_end_token_is_rejected(tmp_path: Path) -> None:
    file = word_level(tmp_path, ["[UNK]"])
    with pytest.raises(ValueError, match="no end/separator token"):
        HFTokenizer(file)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json"):
        HFTokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_tokenizer("bert-base-uncased")
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"not a readable tokenizer\.json"):
        load_tokenizer(tmp_path)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "tokenizer_config.json").write_text(json.dumps({"type": "sentencepiece"}))
    with pytest.raises(ValueError, match="unknown tokenizer type") as err:
        load_tokenizer(odd)
    assert str(err.value).endswith("valid: byte, dna, hf, listops, recall")  # every type


def test_hf_tokenizer_ignores_saved_padding_and_truncation(tmp_path):
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from longseq.data.tokenizers import HFTokenizer

    vocab = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[MASK]": 3, "[UNK]": 4, "a": 5, "b": 6}
    raw = RawTokenizer(WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = Whitespace()
    raw.enable_padding(length=8, pad_id=0, pad_token="[PAD]")
    raw.enable_truncation(max_length=8)
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer(tmp_path)
    assert tok.encode("a b") == [5, 6]
    assert len(tok.encode(" ".join(["a"] * 20))) == 20
