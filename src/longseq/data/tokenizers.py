"""Tokenizers: text <-> integer ids, with the four special ids every longseq task uses.

Three kinds behind one protocol:

- `ByteTokenizer` needs no files (the default, as in the Long Range Arena text tasks): the
  UTF-8 bytes of the text, each byte b -> id b + 4, after four special ids
  (0 = pad, 1 = cls/bos, 2 = sep/eos, 3 = mask). vocab_size = 256 + 4 = 260. Every string
  round-trips exactly, and a sequence of n bytes is n ids.
- `DNATokenizer` needs no files either: one id per nucleotide (A, C, G, T, N) after the same
  four specials (`longseq data genome` also learns a DNA BPE, read by `HFTokenizer`).
- `HFTokenizer` wraps any Hugging Face `tokenizer.json` through the `tokenizers` library (no
  `transformers`), and finds the special ids among the usual tokens ([PAD]/<pad>, ...).

`encode` never adds special tokens: datasets add cls/sep where a task wants them.
`save(dir)` writes `tokenizer_config.json` (+ `tokenizer.json` for HF, and an instruct model's
`chat_template.jinja`) into a folder, which is how a tokenizer travels with a saved model;
`load_tokenizer(dir or "byte")` reads it back.
Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

CONFIG_NAME = "tokenizer_config.json"
HF_FILE = "tokenizer.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
# The tokenizers a task's data defines: the "type" in tokenizer_config.json -> "module:Class"
# with a `from_config(config)` classmethod, imported by name (those modules import this one).
TOKENIZER_TYPES: dict[str, str] = {
    "listops": "longseq.data.listops:ListOpsTokenizer",
    "recall": "longseq.data.recall:RecallTokenizer",
}

# Candidate names for each special role, in order of preference (BERT, RoBERTa/BART,
# GPT-2/Llama styles). The first present in the vocabulary wins.
SPECIAL_CANDIDATES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>", "<|padding|>", "<|pad|>"),
    "cls": ("[CLS]", "<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>"),
    "sep": ("[SEP]", "</s>", "<eos>", "<|end_of_text|>", "<|endoftext|>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
}
# Keys of a Hugging Face tokenizer_config.json that name each role's token.
HF_CONFIG_KEYS: dict[str, tuple[str, ...]] = {
    "pad": ("pad_token",),
    "cls": ("cls_token", "bos_token"),
    "sep": ("sep_token", "eos_token"),
    "mask": ("mask_token",),
}


@runtime_checkable
class Tokenizer(Protocol):
    """What datasets, collators and models need from a tokenizer."""

    vocab_size: int
    pad_id: int
    cls_id: int
    sep_id: int
    mask_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: str | Path) -> Path: ...


class _SpecialAliases:
    """bos/eos are the cls/sep ids (one start and one end token per sequence)."""

    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int | None

    @property
    def bos_id(self) -> int:
        return self.cls_id

    @property
    def eos_id(self) -> int:
        return self.sep_id

    @property
    def special_ids(self) -> list[int]:
        ids = {self.pad_id, self.cls_id, self.sep_id}
        if self.mask_id is not None:
            ids.add(self.mask_id)
        return sorted(ids)


class ByteTokenizer(_SpecialAliases):
    """UTF-8 bytes shifted past four special ids: pad 0, cls/bos 1, sep/eos 2, mask 3."""

    offset = 4
    vocab_size = 256 + offset
    pad_id = 0
    cls_id = 1
    sep_id = 2
    mask_id = 3

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, per id, the (start, end) characters of `text` it comes from."""
        ids, offsets = [], []
        for i, ch in enumerate(text):
            for b in ch.encode("utf-8"):
                ids.append(b + self.offset)
                offsets.append((i, i + 1))
        return ids, offsets

    def decode(self, ids: Iterable[int]) -> str:
        # Special ids (and anything out of range) are dropped; broken UTF-8 becomes U+FFFD.
        data = bytes(i - self.offset for i in map(int, ids) if self.offset <= i < self.vocab_size)
        return data.decode("utf-8", errors="replace")

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps({"type": "byte"}) + "\n")
        return out

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=260)"


class DNATokenizer(_SpecialAliases):
    """One id per nucleotide: A, C, G, T, N after the four special ids of every longseq
    tokenizer (0 pad, 1 cls/bos, 2 sep/eos, 3 mask). Any other letter is an error, so a
    protein or a text file is not read as DNA by mistake; lower case is read as upper."""

    alphabet = "ACGTN"
    offset = 4
    vocab_size = offset + len(alphabet)
    pad_id, cls_id, sep_id, mask_id = 0, 1, 2, 3
    ids: ClassVar[dict[str, int]] = {b: 4 + i for i, b in enumerate(alphabet)}

    def encode(self, text: str) -> list[int]:
        try:
            return [self.ids[b] for b in text.upper()]
        except KeyError as e:
            raise ValueError(
                f"{e.args[0]!r} is not a nucleotide; the DNA tokenizer reads A, C, G, T, N"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.alphabet[i - self.offset] for i in map(int, ids) if i >= self.offset)

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps({"type": "dna"}) + "\n")
        return out

    def __repr__(self) -> str:
        return f"DNATokenizer(vocab_size={self.vocab_size})"


class HFTokenizer(_SpecialAliases):
    """A Hugging Face `tokenizer.json` (via the `tokenizers` library), specials found by name.

    `path` is the tokenizer.json file or a folder holding one. `special_tokens` maps a role
    ("pad", "cls", "sep", "mask") to a token string, overriding the search. A model with no
    padding token (GPT-2 style) pads with its end token; one with no start token uses its end
    token as cls/bos. Without a mask token, `mask_id` is None (masked-LM will refuse it).
    """

    def __init__(self, path: str | Path, special_tokens: dict[str, str] | None = None) -> None:
        # Hugging Face `tokenizers` (heavy) only for a tokenizer.json
        from tokenizers import Tokenizer as _HFTok

        path = Path(path)
        folder = path if path.is_dir() else path.parent
        file = path / HF_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"no Hugging Face tokenizer file at {file}: pass a tokenizer.json or a folder "
                "that holds one (longseq never downloads; save it locally first)"
            )
        try:
            self._tok = _HFTok.from_file(str(file))
        except Exception as e:  # the Rust library raises its own exception type
            raise ValueError(f"{file} is not a readable tokenizer.json: {e}") from None
        # A saved tokenizer.json may carry fixed padding/truncation (MiniLM's: 128), which
        # would silently cut long documents; longseq pads and truncates itself.
        self._tok.no_padding()
        self._tok.no_truncation()
        self.path = file
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        hints = _hf_config_hints(folder / CONFIG_NAME) if path.is_dir() else {}
        hints.update(special_tokens or {})
        unknown = set(hints) - set(SPECIAL_CANDIDATES)
        if unknown:
            raise ValueError(
                f"unknown special-token role(s) {sorted(unknown)}; valid: "
                f"{', '.join(SPECIAL_CANDIDATES)}"
            )
        self.special_tokens = self._find_specials(hints)
        self.pad_id = self._tok.token_to_id(self.special_tokens["pad"])
        self.cls_id = self._tok.token_to_id(self.special_tokens["cls"])
        self.sep_id = self._tok.token_to_id(self.special_tokens["sep"])
        mask = self.special_tokens.get("mask")
        self.mask_id = None if mask is None else self._tok.token_to_id(mask)
        # an instruct model's chat template (Jinja), kept beside tokenizer.json
        self.chat_template = read_chat_template(folder) if path.is_dir() else None
        self._chat: Any = None  # transformers' tokenizer that renders it, made when first used

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The conversation `messages` ([{"role": "user", "content": ...}, ...]) as the text
        the model was trained on, rendered by transformers' `apply_chat_template` from the
        model's own template (ending with the assistant's turn opened, by default)."""
        if self.chat_template is None:
            raise ValueError(
                f"the tokenizer in {self.path.parent} has no chat template (no "
                f"{CHAT_TEMPLATE_FILE}, no chat_template in {CONFIG_NAME}): it is not an "
                "instruct model's, or it was converted by an older longseq (convert it again)"
            )
        if self._chat is None:
            try:
                from transformers import PreTrainedTokenizerFast
            except ImportError:
                raise ImportError(
                    "applying a chat template needs transformers: pip install 'longseq[convert]'"
                ) from None
            specials = {
                "bos_token": self.special_tokens["cls"],
                "eos_token": self.special_tokens["sep"],
            }
            self._chat = PreTrainedTokenizerFast(
                tokenizer_file=str(self.path), chat_template=self.chat_template, **specials
            )
        return self._chat.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _find_specials(self, hints: dict[str, str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for role, candidates in SPECIAL_CANDIDATES.items():
            if role in hints:
                if self._tok.token_to_id(hints[role]) is None:
                    raise ValueError(
                        f"{self.path}: {role} token {hints[role]!r} is not in the vocabulary"
                    )
                found[role] = hints[role]
                continue
            for tok in candidates:
                if self._tok.token_to_id(tok) is not None:
                    found[role] = tok
                    break
        if "sep" not in found:
            raise ValueError(
                f"{self.path}: no end/separator token found (looked for "
                f"{', '.join(SPECIAL_CANDIDATES['sep'])}); name one with "
                "special_tokens={'sep': TOKEN}"
            )
        found.setdefault("cls", found["sep"])
        found.setdefault("pad", found["sep"])
        return found

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, per id, the (start, end) characters of `text` it comes from."""
        enc = self._tok.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if (out / HF_FILE).resolve() != self.path.resolve():
            shutil.copyfile(self.path, out / HF_FILE)
        config = {"type": "hf", **{f"{r}_token": t for r, t in self.special_tokens.items()}}
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        if self.chat_template is not None:
            (out / CHAT_TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        return out

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def read_chat_template(folder: Path) -> str | None:
    """The chat template of a tokenizer folder: `chat_template.jinja` (transformers >= 4.43
    writes it), else the `chat_template` of its tokenizer_config.json (a string, or a list of
    named templates: the one named "default"); None when there is none."""
    file = folder / CHAT_TEMPLATE_FILE
    if file.is_file():
        return file.read_text(encoding="utf-8")
    config_file = folder / CONFIG_NAME
    if not config_file.is_file():
        return None
    try:
        template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"{config_file} is not valid JSON: {e}") from None
    if isinstance(template, list):  # [{"name": ..., "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) and template else None


def _hf_config_hints(path: Path) -> dict[str, str]:
    """Special tokens named in a tokenizer_config.json (ours or Hugging Face's), if any."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    hints: dict[str, str] = {}
    for role, keys in HF_CONFIG_KEYS.items():
        for key in keys:
            value: Any = config.get(key)
            if isinstance(value, dict):  # transformers' AddedToken form: {"content": ...}
                value = value.get("content")
            if isinstance(value, str):
                hints[role] = value
                break
    return hints


def load_tokenizer(name_or_dir: str | Path | Tokenizer | None = "byte") -> Tokenizer:
    """`"byte"` (or None), `"dna"`, a tokenizer.json file, or a folder written by `save` / by
    HF."""
    if name_or_dir is None or (isinstance(name_or_dir, str) and name_or_dir == "byte"):
        return ByteTokenizer()
    if isinstance(name_or_dir, str) and name_or_dir == "dna":
        return DNATokenizer()
    if isinstance(name_or_dir, Tokenizer):
        return name_or_dir
    path = Path(name_or_dir)
    if path.is_file():
        return HFTokenizer(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer {str(name_or_dir)!r} is neither 'byte' nor an existing file or folder "
            "(longseq never downloads: save the Hugging Face tokenizer.json locally and pass "
            "its path)"
        )
    config_file = path / CONFIG_NAME
    kind, config = None, {}
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
            kind = config.get("type")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ValueError(f"{config_file} is not a valid tokenizer config: {e}") from None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "dna":
        return DNATokenizer()
    if kind in TOKENIZER_TYPES:
        module, cls = TOKENIZER_TYPES[kind].split(":")
        return getattr(importlib.import_module(module), cls).from_config(config)
    if (path / HF_FILE).is_file():
        return HFTokenizer(path)
    if kind not in (None, "hf"):
        raise ValueError(
            f"{config_file}: unknown tokenizer type {kind!r}; valid: byte, dna, hf, "
            + ", ".join(TOKENIZER_TYPES)
        )
    raise FileNotFoundError(
        f'no tokenizer in {path}: expected {CONFIG_NAME} with {{"type": "byte"}} or a '
        f"Hugging Face {HF_FILE}"
    )
