"""`longseq convert SRC DST`: a local Hugging Face model folder -> a longseq model folder.

DST gets config.json + model.safetensors, and the tokenizer when SRC has a tokenizer.json
(read by `longseq.data.tokenizers.HFTokenizer`, which also fills the model's cls token id).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    p = commands.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint folder to a longseq model",
        description="Convert a local Hugging Face model folder (config.json + weights; "
        "BERT/MiniLM, RoBERTa, XLM-RoBERTa, Longformer, BigBird, Reformer) into a longseq "
        "model folder that loads with longseq alone. Nothing is downloaded.",
    )
    p.add_argument("src", metavar="SRC", help="Hugging Face model folder")
    p.add_argument("dst", metavar="DST", help="output folder (created)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty DST that an earlier longseq command wrote",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from longseq.convert import destination

    src, dst = Path(args.src), Path(args.dst)
    refused = destination.check(src, dst, args.force)
    if refused:
        return _fail(refused)
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one model, no progress to show
    except ImportError:
        pass  # from_huggingface says how to install it
    try:
        from longseq.convert import from_huggingface

        model = from_huggingface(src)
        tokenizer = None
        if (src / "tokenizer.json").is_file():
            from longseq.data.tokenizers import HFTokenizer

            tokenizer = HFTokenizer(src)
            if tokenizer.vocab_size > model.config.vocab_size:
                print(
                    f"warning: the tokenizer has {tokenizer.vocab_size} tokens but the model "
                    f"only {model.config.vocab_size} embeddings",
                    file=sys.stderr,
                )
            model.config = model.config.replace(cls_token_id=tokenizer.cls_id)
        destination.write(dst, lambda folder: model.save_pretrained(folder, tokenizer=tokenizer))
    except (ValueError, FileNotFoundError, ImportError) as e:
        return _fail(str(e))
    cfg = model.config
    print(
        f"converted {src} -> {dst}: {cfg.architecture}, attention {cfg.attention}, "
        f"{cfg.num_layers} layers x {cfg.hidden_size}, {model.num_parameters():,} parameters, "
        f"max_length {cfg.max_length}"
    )
    print(f"tokenizer: {'copied' if tokenizer is not None else 'none (no tokenizer.json in SRC)'}")
    return 0


def _fail(message: str) -> int:
    print(f"longseq convert: error: {message}", file=sys.stderr)
    return 2


__all__ = ["register", "run"]
