"""The summarisation task on a tiny random decoder with a ChatML tokenizer: the prompt goes
through the chat template with the document cut to fit, the loss is on the summary only (the
oracle: cross-entropy over the full forward's logits on the summary positions), evaluation
equals the per-document losses, `longseq predict --task summarisation` writes summaries with
ROUGE, and the length buckets split as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longseq.cli import main
from longseq.data.chat import ChatPrompt
from longseq.data.tokenizers import load_tokenizer
from longseq.labels import IGNORE
from longseq.models import ModelConfig, build_model
from longseq.tasks import summarise

pytest.importorskip("rouge_score")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "ran",
    "on",
    "under",
    "mat",
    "log",
    "quickly",
    "slowly",
    "red",
    "blue",
    "big",
    "small",
]


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator([" ".join(WORDS)] * 20, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|im_end|>", "chat_template": CHATML}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_split(path: Path, n: int, seed: int, length: tuple[int, int] = (5, 60)) -> None:
    g = torch.Generator().manual_seed(seed)
    lines = []
    for i in range(n):
        k = int(torch.randint(length[0], length[1], (1,), generator=g))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (k,), generator=g)]
        rec = {"id": f"d{i}", "text": " ".join(words), "summary": " ".join(words[:3])}
        if i % 2:
            rec["instruction"] = "Say the first three words."
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("summ")
    write_tokenizer(root / "model")
    tok = load_tokenizer(root / "model")
    model = build_model(
        ModelConfig(architecture="causal-lm", vocab_size=tok.vocab_size, hidden_size=16,
                    num_heads=2, num_layers=1, intermediate_size=32, max_length=96,
                    position="rotary", dropout=0.0),
        seed=0,
    ).eval()  # fmt: skip
    model.save_pretrained(root / "model", tokenizer=tok)
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        write_split(root / f"{split}.jsonl", n, seed=len(split))
    return root, load_tokenizer(root / "model"), model


def test_chat_template_survives_save(setup):
    _root, tok, _ = setup
    assert tok.chat_template == CHATML  # tokenizer_config.json -> HFTokenizer -> save -> load
    chat = ChatPrompt.build(tok, "Summarise.")
    ids = chat.prompt(tok.encode("the cat"))
    text = tok._tok.decode(ids, skip_special_tokens=False)
    assert text == "<|im_start|>user\nthe cat\n\nSummarise.<|im_end|>\n<|im_start|>assistant\n"
    assert chat.end_id == tok._tok.token_to_id("<|im_end|>")


def test_labels_are_the_summary_only_and_the_document_is_cut(setup):
    _, tok, _ = setup
    prompts = summarise.Prompts(tok)
    rec = {"text": " ".join(["cat"] * 200), "summary": "the cat"}
    item = summarise.encode_example(prompts, rec, max_length=96)
    ids, labels = item["input_ids"], item["labels"]
    assert len(ids) == 96 and item["doc_tokens"] == 200 and item["read_tokens"] < 200
    target = [i for i in labels if i != IGNORE]
    assert target == [*tok.encode("the cat"), prompts(rec).end_id]
    assert ids[-len(target) :] == target and labels[: -len(target)] == [IGNORE] * (96 - len(target))
    with pytest.raises(ValueError, match="no room for the document"):
        summarise.encode_example(prompts, rec, max_length=64)


def test_summary_loss_equals_the_full_forward(setup):
    """summary_loss projects only the summary's positions; the oracle is the head's loss."""
    root, tok, model = setup
    ds = summarise.SummaryDataset(root / "test.jsonl", tok, 96)
    for it in ds.items:
        nll, n = summarise.summary_loss(model, it["input_ids"], it["labels"])
        with torch.no_grad():
            out = model(torch.tensor([it["input_ids"]]), labels=torch.tensor([it["labels"]]))
        assert n == sum(t != IGNORE for t in it["labels"][1:])
        assert nll / n == pytest.approx(float(out.loss), rel=1e-5)


@pytest.mark.slow
def test_train_then_evaluate(setup, tmp_path: Path):
    """longseq train on the summary tokens; its test loss pools the per-document losses."""
    from longseq.train import train
    from longseq.train.config import DataConfig

    root, tok, _model = setup
    data = {s: str(root / f"{s}.jsonl") for s in ("train", "val", "test")}
    result = train(
        {
            "model": {"init_from": str(root / "model")},
            "data": {"task": "summarisation", **data, "max_length": 96, "batch_size": 4},
            "optim": {"lr": 1e-3, "max_steps": 2},
            "run": {"out": str(tmp_path / "run"), "eval_every": 2, "progress": False},
        }
    )
    cfg = DataConfig(task="summarisation", test=data["test"], max_length=96)
    rows = summarise.Summarisation().by_distance(result.model, cfg, tok)
    pooled = sum(r[1] for r in rows) / sum(r[2] for r in rows)
    assert result.test["loss"] == pytest.approx(pooled, rel=1e-4)


def test_evaluate_and_predict(setup, capsys):
    root, tok, model = setup
    test = str(root / "test.jsonl")
    # evaluate's loss (the summary tokens' mean NLL over the split) pools by_distance's rows
    assert main(["evaluate", "--model", str(root / "model"), "--task", "summarisation",
                 "--data", test, "--max-length", "96", "--no-progress"]) == 0  # fmt: skip
    scored = json.loads(capsys.readouterr().out)
    from longseq.train.config import DataConfig

    cfg = DataConfig(task="summarisation", test=test, max_length=96)
    rows = summarise.Summarisation().by_distance(model, cfg, tok)
    assert scored["loss"] == pytest.approx(sum(r[1] for r in rows) / sum(r[2] for r in rows),
                                           rel=1e-4)  # fmt: skip
    assert {summarise.bucket(int(r[0])) for r in rows} == {"<2K"}
    # predict: greedy summaries with ROUGE against the references
    assert main(["predict", "--model", str(root / "model"), "--task", "summarisation",
                 "--max-new-tokens", "4", test, "--no-progress"]) == 0  # fmt: skip
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in out] == ["d0", "d1", "d2", "d3"]
    for r in out:
        assert isinstance(r["summary"], str) and r["doc_tokens"] >= r["read_tokens"] > 0
        assert r["truncated"] == (r["doc_tokens"] > r["read_tokens"])
        assert set(summarise.ROUGE) <= set(r) and 0 <= r["rougeL"] <= 100
    # a task that writes no text refuses --max-new-tokens
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", str(root / "model"), "--task", "lm",
              "--max-new-tokens", "4", test])  # fmt: skip
    assert exc.value.code == 2


def test_rouge_and_buckets():
    assert summarise.rouge("the cats sat", "The cat sat")["rouge1"] == pytest.approx(100.0)
    assert summarise.rouge("dog", "the cat sat")["rougeL"] == 0.0
    assert [summarise.bucket(n) for n in (0, 2047, 2048, 8191, 8192)] == [
        "<2K", "<2K", "2K-8K", "2K-8K", ">8K"]  # fmt: skip
    rows = [{"doc_tokens": 100, "x": 1.0}, {"doc_tokens": 300, "x": 3.0},
            {"doc_tokens": 9000, "x": 5.0}]  # fmt: skip
    got = summarise.by_bucket(rows, ("x",))
    assert list(got) == ["<2K", ">8K", "all"]
    assert got["<2K"]["n"] == 2 and got["<2K"]["x"] == pytest.approx((2.0, 1.0))
    assert got[">8K"]["x"] == (5.0, 0.0) and got["all"]["x"][0] == pytest.approx(3.0)
