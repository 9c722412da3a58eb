r"""`longseq generate`: continue a prompt with a saved causal LM (`longseq predict`, for the
other heads, is in `longseq.train.commands`, beside evaluate: it asks the task).

`longseq generate` continues a prompt with a saved causal language model:

    longseq generate --model DIR --prompt "To be, or not" --max-new-tokens 200 \
        [--temperature 0.8 --top-k 40 --top-p 0.95 --seed 0] [--stop $'\n\n'] [--no-stream]
    longseq generate --model DIR --prompt-file LONG.txt --chat [--system TEXT]

The model comes from `longseq.models.from_pretrained(DIR)` and its tokenizer from the same
folder (`longseq.data.tokenizers.load_tokenizer(DIR)`; a folder without tokenizer files falls
back to the byte tokenizer when the model's vocabulary is the byte vocabulary, 260). `--chat`
sends the prompt as the user's message through the model's chat template (an instruct model's
tokenizer keeps it: `chat_template.jinja`), rendered by transformers. The mechanism is the
model's: make a copy with another one (a window and attention sinks, to read past the trained
length in constant memory) with `longseq longify`. The prompt is echoed, then the new text is
printed as it is generated; a summary (time to the first token, then milliseconds per token,
cache kind, why it stopped) goes to stderr. Temperature 0 (the default) is greedy decoding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from longseq.argtypes import nonnegative, positive
from longseq.data.tokenizers import ByteTokenizer, load_tokenizer
from longseq.models import from_pretrained, read_config
from longseq.models.generation import TextStreamer, generate, position_limit


def register(commands: Any) -> None:
    _register_generate(commands)


def _register_generate(commands: Any) -> None:
    p = commands.add_parser(
        "generate",
        help="generate text with a saved causal language model",
        description="Continue a prompt with a model saved by save_pretrained "
        "(architecture causal-lm). Greedy by default; --temperature > 0 samples.",
    )
    p.add_argument("--model", required=True, help="folder written by save_pretrained")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-file", help="read the prompt from this UTF-8 file")
    p.add_argument("--max-new-tokens", type=positive(int), default=200, help="(default 200)")
    p.add_argument(
        "--temperature",
        type=nonnegative(float),
        default=0.0,
        help="sampling temperature; 0 (default) = greedy",
    )
    p.add_argument("--top-k", type=positive(int), default=None, help="sample from the k best")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--seed", type=int, default=None, help="seed of the sampler")
    p.add_argument(
        "--stop", action="append", default=[], help="stop when this text appears (repeatable)"
    )
    p.add_argument("--add-bos", action="store_true", help="start the prompt with the bos token")
    p.add_argument(
        "--chat",
        action="store_true",
        help="an instruct model: send the prompt as the user's message, through the model's "
        "chat template (kept by longseq convert), and answer as the assistant",
    )
    p.add_argument("--system", default=None, help="with --chat: a system message first")
    p.add_argument(
        "--no-stream", dest="stream", action="store_false", help="print the text at the end"
    )
    p.add_argument(
        "--no-cache",
        dest="use_cache",
        action="store_false",
        help="run the full forward at every step (slow: the reference for the cache, and the "
        "way to decode Hugging Face-parity layers that are not prefix-stable)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=positive(int), default=None, help="torch intra-op threads")
    p.set_defaults(func=run, generate_parser=p)


def _tokenizer(directory: Path, vocab_size: int) -> Any:
    byte_vocab = ByteTokenizer.vocab_size
    try:
        return load_tokenizer(directory)
    except FileNotFoundError:
        if vocab_size != byte_vocab:
            raise ValueError(
                f"{directory} has no tokenizer files and the model's vocab_size={vocab_size} is "
                f"not the byte tokenizer's {byte_vocab}; save the model with its tokenizer "
                "(model.save_pretrained(dir, tokenizer=tok))"
            ) from None
        print(f"note: no tokenizer in {directory}; using the byte tokenizer", file=sys.stderr)
        return ByteTokenizer()


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.generate_parser
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    sampling = args.temperature > 0
    if not sampling and (args.top_k is not None or args.top_p is not None):
        parser.error("--top-k/--top-p need sampling: give --temperature > 0 as well")
    if args.system is not None and not args.chat:
        parser.error("--system is a message of the chat: give --chat as well")
    try:
        model, tokenizer = load_model(args, "causal-lm")
        prompt = args.prompt if args.prompt_file is None else read_text(args.prompt_file)
        if args.chat:
            prompt = chat_prompt(tokenizer, prompt, args.system, args.model)
    except (FileNotFoundError, ValueError, ImportError) as e:
        parser.error(str(e))
    ids = tokenizer.encode(prompt)
    if args.add_bos:
        ids = [tokenizer.bos_id, *ids]
    if not ids:
        parser.error("the prompt is empty: give some text, or --add-bos to start from nothing")
    limit = position_limit(model, args.use_cache)
    if limit is not None and len(ids) >= limit:
        parser.error(
            f"the prompt is {len(ids)} tokens and --model {args.model} reads at most {limit} "
            f"(prompt and answer; {_why_limited(model)}); shorten it, or make a copy that reads "
            "further with longseq longify (e.g. --attention longformer --window 1024 "
            "--global-tokens 4: a fixed window plus attention sinks, no length limit)"
        )

    clock = _Clock(TextStreamer(tokenizer) if args.stream else None)
    if args.stream:
        sys.stdout.write(prompt)
        sys.stdout.flush()
    start = time.perf_counter()
    try:
        out = generate(
            model,
            torch.tensor([ids], device=args.device),
            args.max_new_tokens,
            do_sample=sampling,
            temperature=args.temperature if sampling else 1.0,
            top_k=args.top_k,
            top_p=args.top_p,
            stop_strings=args.stop or None,
            tokenizer=tokenizer,
            seed=args.seed,
            streamer=clock,
            use_cache=args.use_cache,
        )
    except ValueError as e:
        parser.error(str(e))
    new = out.new_tokens(0).tolist()
    if not args.stream:
        sys.stdout.write(prompt + tokenizer.decode(new))
    sys.stdout.write("\n")
    times = clock.times
    first = f"first token after {times[0] - start:.2f} s" if times else "no token"
    rate = ""
    if len(times) > 1:
        rate = f", then {1000 * (times[-1] - times[0]) / (len(times) - 1):.1f} ms/token"
    print(
        f"[{len(new)} new tokens after a {len(ids)}-token prompt: {first}{rate}; "
        f"cache {out.cache}; stopped: {out.finish_reasons[0]}]",
        file=sys.stderr,
    )
    return 0


def chat_prompt(tokenizer: Any, text: str, system: str | None, model: str) -> str:
    """`text` as the user's message of a chat (after `system`'s, if given), rendered by the
    tokenizer's chat template, the assistant's turn opened; ValueError without a template."""
    if not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError(
            f"--chat: --model {model} has a {type(tokenizer).__name__}, which has no chat "
            "template (only an instruct model's Hugging Face tokenizer has one)"
        )
    messages = [{"role": "system", "content": system}] if system is not None else []
    return tokenizer.apply_chat_template([*messages, {"role": "user", "content": text}])


def _why_limited(model: Any) -> str:
    cfg = model.config
    if cfg.position in ("learned", "axial"):
        return f"its {cfg.position} position table ends at max_length"
    return "some layer keeps every position and was trained on at most max_length tokens"


def load_model(args: argparse.Namespace, architecture: str | None = None) -> tuple[Any, Any]:
    """The model of --model on --device (--threads), and its tokenizer; ValueError with the
    reason when it is not there, not `architecture`, or the two do not belong together."""
    directory = Path(args.model)
    if architecture is not None:
        try:
            raw = read_config(directory)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"--model {directory}: {e}") from None
        if raw.get("architecture") != architecture:
            raise ValueError(
                f"--model {directory} is a {raw.get('architecture')!r} model; {args.command} "
                f"needs one trained with architecture {architecture!r}"
            )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    model = from_pretrained(directory, device=args.device)
    tokenizer = _tokenizer(directory, model.config.vocab_size)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"the tokenizer's vocab_size {tokenizer.vocab_size} exceeds the model's "
            f"{model.config.vocab_size}: they do not belong together"
        )
    return model, tokenizer


def read_text(path: str) -> str:
    """A UTF-8 text file, or ValueError naming the file and what is wrong."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from None


class _Clock:
    """A streamer that timestamps every step and passes the tokens on to `inner`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.times: list[float] = []

    def __call__(self, tokens: Any) -> None:
        self.times.append(time.perf_counter())
        if self.inner is not None:
            self.inner(tokens)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()


__all__ = ["load_model", "read_text", "register", "run"]
