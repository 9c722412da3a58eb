"""`longseq convert`, `longseq longify` and `longseq export`.

`longseq convert SRC DST`: a local Hugging Face model folder, or a GGUF file -> a longseq
model folder. DST gets config.json + model.safetensors, and the tokenizer when SRC has a
tokenizer.json or is a GGUF file (read by `longseq.data.tokenizers.HFTokenizer`, which also
fills the model's cls token id).

`longseq longify SRC DST --max-length N --attention NAME [options]`: a longer copy of a model.
SRC is a folder saved by longseq or a Hugging Face model folder (converted on the fly); DST
gets the longified model and SRC's tokenizer. Mechanism options come from the named flags or
`--option key=value` (the value is read as JSON when it parses: 3, 0.5, [1, 2], null, true;
otherwise as a string). See `longseq.convert.longify` for what is copied and what is exact.

`longseq export MODEL OUT --format hf|torch|onnx`: a longseq model folder -> a Hugging Face
folder (`longseq.convert.to_hf`: config.json, model.safetensors, tokenizer files), a
torch.export program (model.pt2) or an ONNX file (model.onnx) (`longseq.convert.program`).
Each is checked against the model before the command succeeds; OUT also gets export.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from longseq.convert import destination, from_huggingface
from longseq.convert.local import gguf_tokenizer, is_gguf

# the module, not the function `longseq.convert.longify` that shadows it in the package
from longseq.convert.longify import (
    describe_lengths,
    exact_lengths,
    load_source,
    longify_with_report,
)
from longseq.data.tokenizers import HFTokenizer, load_tokenizer


def register(commands: Any) -> None:
    _register_convert(commands)
    _register_longify(commands)
    _register_export(commands)


def _register_convert(commands: Any) -> None:
    p = commands.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint folder to a longseq model",
        description="Convert a local Hugging Face model folder (config.json + weights; "
        "BERT/MiniLM, RoBERTa, XLM-RoBERTa, Longformer, BigBird, Reformer, Llama) or a GGUF "
        "file (Llama architecture) into a longseq model folder that loads with longseq "
        "alone. Nothing is downloaded.",
    )
    p.add_argument("src", metavar="SRC", help="Hugging Face model folder, or a .gguf file")
    p.add_argument("dst", metavar="DST", help="output folder (created)")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty DST that an earlier longseq command wrote",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    refused = destination.check(src, dst, args.force)
    if refused:
        return _fail(refused)
    try:  # optional (the `convert` extra): imported only to convert
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one model, no progress to show
    except ImportError:
        pass  # from_huggingface says how to install it
    try:
        with tempfile.TemporaryDirectory() as tmp:  # a GGUF file's tokenizer, exported
            model, tokenizer = _model_and_tokenizer(src, Path(tmp))
            destination.write(
                dst, lambda folder: model.save_pretrained(folder, tokenizer=tokenizer)
            )
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


def _model_and_tokenizer(src: Path, tmp: Path) -> tuple[Any, Any]:
    """The converted model and SRC's tokenizer (None without a tokenizer.json); a GGUF
    file's tokenizer is exported into `tmp` first."""
    model = from_huggingface(src)
    folder = gguf_tokenizer(src, tmp) if is_gguf(src) else src
    if not (folder / "tokenizer.json").is_file():
        return model, None

    tokenizer = HFTokenizer(folder)
    if tokenizer.vocab_size > model.config.vocab_size:
        print(
            f"warning: the tokenizer has {tokenizer.vocab_size} tokens but the model "
            f"only {model.config.vocab_size} embeddings",
            file=sys.stderr,
        )
    model.config = model.config.replace(cls_token_id=tokenizer.cls_id)
    return model, tokenizer


def _fail(message: str) -> int:
    print(f"longseq convert: error: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------- longify

# Named flags for the options people set most; everything else goes through --option.
_FLAGS = {
    "window": "longformer: total window width (w/2 tokens each side)",
    "block_size": "bigbird: tokens per block",
    "k": "linformer: projected length (default: the source's max_length)",
    "chunk_length": "lsh: tokens per chunk",
    "num_buckets": "lsh: buckets per hashing round",
}


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def _register_longify(commands: Any) -> None:
    p = commands.add_parser(
        "longify",
        help="extend a short pre-trained encoder or decoder to a longer max length and a sparse "
        "mechanism",
        description="Copy SRC (a longseq or Hugging Face model folder, encoder or decoder) into "
        "DST with a longer max length and a new attention mechanism (causal for a decoder): "
        "position embeddings tiled out to the new length (rotary positions have no table), "
        "Longformer's global projections copied from the local ones, every other weight kept. "
        "Prints the input lengths at which DST reproduces SRC exactly.",
    )
    p.add_argument("src", metavar="SRC", help="source model folder (longseq or Hugging Face)")
    p.add_argument("dst", metavar="DST", help="output folder")
    p.add_argument("--max-length", type=int, required=True, help="new maximum length")
    p.add_argument(
        "--attention",
        required=True,
        help="mechanism of every layer: longformer, bigbird, linformer, lsh, local (or full)",
    )
    p.add_argument(
        "--global-tokens",
        type=int,
        default=None,
        metavar="G",
        help="the first G positions are global in every layer whose mechanism has global "
        "tokens (longformer); in a decoder they are attention sinks, seen by every later "
        "token (default: the source's setting)",
    )
    for name, text in _FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=None, help=text)
    p.add_argument(
        "--option",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="any other option of the mechanism, e.g. --option dilation=2 "
        "--option num_random_blocks=2 (repeatable)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty DST that an earlier longseq command wrote",
    )
    p.add_argument(
        "--no-check",
        dest="check",
        action="store_false",
        help="skip comparing SRC and DST on a random input of the longest exact length",
    )
    p.set_defaults(func=run_longify)


def run_longify(args: argparse.Namespace) -> int:
    refused = destination.check(args.src, args.dst, args.force)
    if refused:
        return _error(refused)
    options: dict[str, Any] = {}
    for key, value in args.option:
        if key in options:
            return _error(f"option {key!r} given twice")
        options[key] = value
    for name in _FLAGS:
        value = getattr(args, name)
        if value is not None:
            if name in options:
                return _error(f"option {name!r} given both as --{name} and --option")
            options[name] = value
    try:
        source = load_source(args.src)
        model, report = longify_with_report(
            source, args.max_length, args.attention, global_tokens=args.global_tokens, **options
        )
    except (ValueError, FileNotFoundError) as e:
        return _error(str(e))
    exact = exact_lengths(source.config, model.config)
    cfg = model.config
    sinks = f", global_tokens {cfg.global_tokens}" if cfg.global_tokens else ""
    print(
        f"{args.src}: {source.config.attention}, max_length {source.config.max_length} -> "
        f"{cfg.attention} {json.dumps(cfg.attention_options)}, max_length {cfg.max_length}"
        f"{sinks}"
    )
    for kind in ("extended", "derived", "initialised", "dropped"):
        if report[kind]:
            names = ", ".join(report[kind][:2]) + (", ..." if len(report[kind]) > 2 else "")
            print(f"  {kind} ({len(report[kind])}): {names}")
    print(f"outputs equal the source's for input lengths: {describe_lengths(exact)}")
    if args.check and exact:
        n = max(x for x in exact if x <= 512)  # keep the check quick
        ids = torch.randint(0, cfg.vocab_size, (1, n), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            a, b = (_outputs(m, ids) for m in (source.eval(), model))
        print(
            f"check at {n} token{'s' * (n > 1)}: max |difference| {float((a - b).abs().max()):.2e}"
        )
    tokenizer = _tokenizer(args.src)
    destination.write(args.dst, lambda folder: model.save_pretrained(folder, tokenizer=tokenizer))
    print(f"wrote {args.dst}" + ("" if tokenizer else " (no tokenizer found in SRC)"))
    return 0


def _outputs(model: Any, ids: Any) -> Any:
    out = model(ids)
    return out.logits if out.logits is not None else out.last_hidden_state


def _tokenizer(src: str) -> Any:
    try:
        return load_tokenizer(src)
    except (FileNotFoundError, ValueError):
        return None


def _error(message: str) -> int:
    print(f"longseq longify: error: {message}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------- export


def _register_export(commands: Any) -> None:
    p = commands.add_parser(
        "export",
        help="export a longseq model to a Hugging Face folder, a torch.export program or ONNX",
        description="Write MODEL (a folder saved by longseq) as a Hugging Face folder that "
        "transformers loads with from_pretrained (--format hf), a torch.export program "
        "(--format torch: model.pt2) or an ONNX file (--format onnx: model.onnx), with a "
        "dynamic batch and sequence length. The result is compared with the model before the "
        "command succeeds; a model no format can express is refused with the reason.",
    )
    p.add_argument("model", metavar="MODEL", help="longseq model folder")
    p.add_argument("out", metavar="OUT", help="output folder (created)")
    p.add_argument("--format", choices=("hf", "torch", "onnx"), default="hf", help="default: hf")
    p.add_argument(
        "--force",
        action="store_true",
        help="replace a non-empty OUT that an earlier longseq command wrote",
    )
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from longseq.convert import program, to_hf
    from longseq.models import from_pretrained

    refused = destination.check(args.model, args.out, args.force)
    if refused:
        return _export_error(refused)
    try:
        model = from_pretrained(args.model).eval()
        tokenizer = _tokenizer(args.model)
        if args.format == "hf":
            _quiet_transformers()
            destination.write(args.out, lambda f: _write_hf(model, f, tokenizer, args.model))
            family = to_hf.hf_family(model.config)
            print(
                f"exported {args.model} -> {args.out}: Hugging Face {family} "
                f"({to_hf.hf_class(model.config, family).__name__})"
            )
            return 0
        results: dict[str, Any] = {}
        destination.write(
            args.out, lambda f: results.update(program.export_checked(model, f, args.format))
        )
    except (ValueError, FileNotFoundError, ImportError) as e:
        return _export_error(str(e))
    print(
        f"exported {args.model} -> {args.out}/{program.FILES[args.format]}: inputs "
        f"{', '.join(results['inputs'])}; outputs {', '.join(results['outputs'])}; batch and "
        f"sequence length dynamic (1 to {results['max_length']} tokens)"
    )
    for n, diff in results["checked"].items():
        print(f"  n={n}: max |program - eager| {diff:.1e}")
    return 0


def _write_hf(model: Any, folder: Path, tokenizer: Any, source: str) -> None:
    from longseq.convert import to_hf

    to_hf.export_hf(model, folder, tokenizer)
    record = {"format": "hf", "source": str(source)}
    (folder / destination.EXPORT_RECORD).write_text(json.dumps(record, indent=2))


def _quiet_transformers() -> None:
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()  # one folder, no progress to show
    except ImportError:
        pass


def _export_error(message: str) -> int:
    print(f"longseq export: error: {message}", file=sys.stderr)
    return 2


__all__ = ["register", "run", "run_export", "run_longify"]
