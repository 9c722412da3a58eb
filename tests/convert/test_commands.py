"""`longseq convert SRC DST`: a saved HF folder in, a longseq folder (with tokenizer) out."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from longseq import cli  # noqa: E402
from longseq.data.tokenizers import load_tokenizer  # noqa: E402
from longseq.models import from_pretrained  # noqa: E402

WORDS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>", *(f"w{i}" for i in range(94))]


@pytest.fixture(autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)


def hf_folder(tmp_path, tokenizer: bool = True):
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = transformers.LongformerConfig(
        vocab_size=len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=66,
        attention_window=[4, 8],
        initializer_range=0.3,
    )
    torch.manual_seed(0)
    hf = transformers.LongformerForMaskedLM(config).eval()
    src = tmp_path / "hf"
    hf.save_pretrained(src)
    if tokenizer:
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.save(str(src / "tokenizer.json"))
    return hf, src


def test_convert_writes_a_longseq_folder_with_the_tokenizer(tmp_path, capsys) -> None:
    hf, src = hf_folder(tmp_path)
    dst = tmp_path / "out"
    assert cli.main(["convert", str(src), str(dst)]) == 0
    assert "tokenizer: copied" in capsys.readouterr().out
    model = from_pretrained(dst)
    tok = load_tokenizer(dst)
    assert model.config.cls_token_id == tok.cls_id == 0
    assert model.config.pad_token_id == tok.pad_id == 1
    ids = torch.tensor([[tok.cls_id, *tok.encode("w5 w7 w9 " * 12), tok.sep_id]])
    glob = torch.zeros_like(ids)
    glob[0, 0] = 1
    with torch.no_grad():
        a = hf(input_ids=ids, global_attention_mask=glob).logits
        b = model(ids, global_attention_mask=glob).logits
    assert (a - b).abs().max() < 1e-5


def test_convert_without_tokenizer_and_refusing_to_overwrite(tmp_path, capsys) -> None:
    _, src = hf_folder(tmp_path, tokenizer=False)
    dst = tmp_path / "out"
    assert cli.main(["convert", str(src), str(dst)]) == 0
    assert "tokenizer: none" in capsys.readouterr().out
    assert not (dst / "tokenizer.json").exists()
    assert cli.main(["convert", str(src), str(dst)]) == 2
    assert "--force" in capsys.readouterr().err
    assert cli.main(["convert", str(src), str(dst), "--force"]) == 0


def test_convert_reports_bad_sources(tmp_path, capsys) -> None:
    assert cli.main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longseq convert: error:") and "no Hugging Face model folder" in err


def test_convert_never_writes_into_its_source(tmp_path, capsys) -> None:
    """`convert H H --force` destroyed the Hugging Face source; now it is refused."""
    _, src = hf_folder(tmp_path)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for dst in (src, src / "inside"):
        assert cli.main(["convert", str(src), str(dst), "--force"]) == 2
        assert "is SRC or inside it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    # --force replaces only a longseq output, not any folder
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert cli.main(["convert", str(src), str(other), "--force"]) == 2
    assert "not a longseq model folder" in capsys.readouterr().err
