"""`longseq generate` with an instruct model: --prompt-file, --chat (the model's own chat
template, kept by save/convert and rendered by transformers), and the clear errors; the
prefill's `logits_at` and the rotary tables shared by the layers.

Oracles: the chat text is compared with the string the template defines, written out by hand
(and the ids the model reads start with the template's special token, not its characters);
`logits_at` with the full forward's logits at those positions; rotary tables with a fresh
module's.
"""

from __future__ import annotations

import json

import pytest
import torch

from longseq.cli import main
from longseq.data.tokenizers import HFTokenizer, load_tokenizer
from longseq.layers import RotaryEmbedding
from longseq.models import ModelConfig, build_model

tokenizers = pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA = {  # a tiny random Llama: RMSNorm, SwiGLU, rotary, grouped-query attention
    "architecture": "causal-lm",
    "hidden_size": 32,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "num_layers": 2,
    "intermediate_size": 48,
    "norm_type": "rms",
    "feed_forward": "gated",
    "activation": "silu",
    "bias": False,
    "feed_forward_bias": False,
    "output_bias": False,
    "position": "rotary",
    "max_length": 64,
    "dropout": 0.0,
}


def hf_tokenizer_folder(folder, chat_template: str | list | None = TEMPLATE):
    """A small byte-level BPE tokenizer.json with ChatML's special tokens, and a Hugging
    Face tokenizer_config.json that holds the chat template (as transformers < 4.43 wrote)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["hello world, the user and the assistant"], trainer)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture
def instruct(tmp_path):
    """A saved tiny Llama with the chat tokenizer (its folder) and the tokenizer."""
    tok = HFTokenizer(hf_tokenizer_folder(tmp_path / "hf-tok"))
    model = build_model(ModelConfig(**LLAMA, vocab_size=tok.vocab_size), seed=0).eval()
    model.save_pretrained(tmp_path / "m", tokenizer=tok)
    return tmp_path / "m", tok


def test_saving_keeps_the_chat_template(tmp_path):
    tok = HFTokenizer(hf_tokenizer_folder(tmp_path / "src"))
    assert tok.chat_template == TEMPLATE
    tok.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "chat_template.jinja").read_text() == TEMPLATE
    again = load_tokenizer(tmp_path / "saved")
    assert again.chat_template == TEMPLATE
    # transformers' list of named templates: the "default" one
    named = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": TEMPLATE}]
    assert HFTokenizer(hf_tokenizer_folder(tmp_path / "named", named)).chat_template == TEMPLATE
    assert HFTokenizer(hf_tokenizer_folder(tmp_path / "none", None)).chat_template is None
    assert not (tmp_path / "none").joinpath("chat_template.jinja").exists()


def test_chat_text_is_the_templates(instruct):
    _, tok = instruct
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    want = (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(messages) == want
    assert tok.apply_chat_template(messages[1:], add_generation_prompt=False) == (
        "<|im_start|>user\nhello<|im_end|>\n"
    )
    ids = tok.encode(want)  # the markers are single special tokens
    start = tok._tok.token_to_id("<|im_start|>")
    assert ids[0] == start and ids.count(start) == 3


def test_cli_prompt_file_and_chat(instruct, tmp_path, capsys):
    folder, tok = instruct
    prompt = tmp_path / "question.txt"
    prompt.write_text("hello world", encoding="utf-8")
    base = ["generate", "--model", str(folder), "--prompt-file", str(prompt)]
    base += ["--max-new-tokens", "3", "--no-stream"]
    assert main(base) == 0
    out = capsys.readouterr()
    assert out.out.startswith("hello world")
    assert f"after a {len(tok.encode('hello world'))}-token prompt" in out.err

    assert main([*base, "--chat", "--system", "be brief"]) == 0
    out = capsys.readouterr()
    chat = (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert f"after a {len(tok.encode(chat))}-token prompt" in out.err
    assert out.out.startswith(chat)  # the prompt as the model reads it, then the answer


def test_cli_chat_and_prompt_errors(instruct, tmp_path, capsys):
    folder, tok = instruct
    bare = tmp_path / "bare"  # the same model, its tokenizer without a template
    plain = HFTokenizer(hf_tokenizer_folder(tmp_path / "plain-tok", None))
    build_model(ModelConfig(**LLAMA, vocab_size=tok.vocab_size)).save_pretrained(bare, plain)
    cases = [
        (["--model", str(bare), "--prompt", "hi", "--chat"], "has no chat template"),
        (["--model", str(folder), "--prompt", "hi", "--system", "x"], "give --chat as well"),
        (
            ["--model", str(folder), "--prompt", "hello world " * 40],
            "reads at most 64 (prompt and answer; some layer keeps every position",
        ),
    ]
    byte_lm = tmp_path / "byte"
    build_model(ModelConfig(**{**LLAMA, "vocab_size": 260})).save_pretrained(byte_lm)
    cases.append((["--model", str(byte_lm), "--prompt", "hi", "--chat"], "no chat template"))
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["generate", *args])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err, err
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(folder), "--prompt", "hello world " * 40])
    assert "longseq longify" in capsys.readouterr().err


def test_logits_at_equals_the_full_forward():
    model = build_model(ModelConfig(**LLAMA, vocab_size=300), seed=0).double().eval()
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    at = torch.tensor([[8, 0], [3, 3]])
    with torch.no_grad():
        full = model(ids).logits
        some = model(ids, logits_at=at).logits
    want = torch.stack([full[0, [8, 0]], full[1, [3, 3]]])
    torch.testing.assert_close(some, want, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="no loss"):
        model(ids, labels=ids, logits_at=at)


def test_rotary_tables_are_reused_only_when_the_same():
    rot = RotaryEmbedding(8, 100.0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 1, 5, 8)

    def fresh(pos):
        return RotaryEmbedding(8, 100.0)(q, k, positions=pos)

    pos = torch.arange(5).repeat(2, 1)
    for got, want in zip(rot(q, k, positions=pos), fresh(pos), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    pos.add_(7)  # changed in place: the same tensor, a new version
    for got, want in zip(rot(q, k, positions=pos), fresh(pos.clone()), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    other = torch.tensor([[3, 4, 5, 6, 7], [0, 1, 2, 3, 4]])
    for got, want in zip(rot(q, k, positions=other), fresh(other), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    a = rot.cos_sin(5, 2)
    assert rot.cos_sin(5, 2)[0] is a[0]  # the same request: the same tables
    torch.testing.assert_close(rot.cos_sin(6, 2)[0][:5], a[0], rtol=0, atol=0)
    assert rot.cos_sin(5, 2, dtype=torch.float64)[0].dtype == torch.float64
