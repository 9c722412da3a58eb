"""Map-style datasets: text classification from JSONL/CSV, language modelling from text files.

Text classification. Each example is `{"text": ..., "label": ...}` (a JSONL line, or a CSV row
with columns text,label). It becomes `[cls] + encode(text)[: max_length - 2] + [sep]` and a
label id. Labels may be strings or integers; the label names (sorted unique strings, in
numeric order when all are integers, or a list you give, e.g. the train set's for the
validation set) travel with the model config.

Language modelling. The files' tokens are concatenated (an end token between files) and cut
into blocks of `block_size` tokens. `labels` = `input_ids`: the causal LM shifts inside
(Hugging Face convention), so a block predicts its tokens 1..block_size-1. Consecutive blocks
therefore overlap by exactly one token (stride block_size - 1): every token after the first
is a target exactly once, so the loss over all blocks is the loss over the whole corpus.
For training, `random_offset=True` shifts the cut points by a random 0..stride-1 tokens each
epoch (deterministic given `seed` and `set_epoch(epoch)`); the number of blocks never
changes, so every epoch has the same length.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from longseq.data.tokenizers import ByteTokenizer, Tokenizer, load_tokenizer

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}


# ----------------------------------------------------------------------------- encoding
def encode(tokenizer: Tokenizer, text: str | bytes) -> torch.Tensor:
    """Token ids (int32) of `text`; the byte tokenizer takes a vectorised path."""
    if isinstance(tokenizer, ByteTokenizer):
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        arr = np.frombuffer(data, dtype=np.uint8).astype(np.int32) + ByteTokenizer.offset
        return torch.from_numpy(arr)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return torch.tensor(tokenizer.encode(text), dtype=torch.int32)


def _encode_long_text(tokenizer: Tokenizer, text: str, chunk_chars: int = 1 << 20) -> torch.Tensor:
    """Encode a large text in ~1 MB pieces cut at line ends (bounded memory per call)."""
    if isinstance(tokenizer, ByteTokenizer) or len(text) <= chunk_chars:
        return encode(tokenizer, text)
    parts, start = [], 0
    while start < len(text):
        end = text.find("\n", start + chunk_chars)
        end = len(text) if end < 0 else end + 1
        parts.append(encode(tokenizer, text[start:end]))
        start = end
    return torch.cat(parts)


# ----------------------------------------------------------------------------- reading
def read_examples(
    path: str | Path, text_field: str = "text", label_field: str = "label"
) -> list[tuple[str, Any]]:
    """(text, raw label) pairs from a .jsonl or .csv file, with errors that name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no data file at {path}")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: unsupported file type {path.suffix!r}; use .jsonl (one JSON object per "
            "line) or .csv (header with text,label columns)"
        )
    reader = _read_jsonl if kind == "jsonl" else _read_csv
    try:
        examples = reader(path, text_field, label_field)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start} of a "
            "line); save the file as UTF-8"
        ) from None
    if not examples:
        raise ValueError(f"{path} holds no examples (the file is empty)")
    return examples


def json_objects(lines: Iterable[str], source: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line of a JSON-lines text; a line that is not
    a JSON object raises an error naming `source` and the line."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{lineno}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{source}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _read_jsonl(path: Path, text_field: str, label_field: str) -> list[tuple[str, Any]]:
    examples = []
    with path.open(encoding="utf-8") as f:
        for lineno, obj in json_objects(f, path):
            missing = [k for k in (text_field, label_field) if k not in obj]
            if missing:
                raise ValueError(
                    f"{path}:{lineno}: missing field(s) {missing}; the line has "
                    f"{sorted(obj)} (set text_field / label_field to use other names)"
                )
            if not isinstance(obj[text_field], str):
                raise ValueError(f"{path}:{lineno}: field {text_field!r} is not a string")
            examples.append((obj[text_field], obj[label_field]))
    return examples


def _read_csv(path: Path, text_field: str, label_field: str) -> list[tuple[str, Any]]:
    # Whole documents live in one field: lift the csv module's 128 kB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            return []
        missing = [k for k in (text_field, label_field) if k not in reader.fieldnames]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; the header has {reader.fieldnames} "
                "(set text_field / label_field to use other names)"
            )
        return [(row[text_field], row[label_field]) for row in reader]


# ----------------------------------------------------------------------------- labels
def _label_order(names: set[str]) -> list[str]:
    if all(n.isdigit() for n in names):
        return sorted(names, key=int)  # "2" before "10"
    return sorted(names)


def resolve_labels(
    raw: Sequence[Any], label_names: Sequence[str] | None = None, where: str = "labels"
) -> tuple[list[int], list[str]]:
    """Label ids and names. Integer labels are ids; string labels are looked up by name."""
    for i, v in enumerate(raw):
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError(f"{where}: example {i} has label {v!r}; labels must be str or int")
    if label_names is None:
        if all(isinstance(v, int) for v in raw):
            if min(raw) < 0:
                raise ValueError(f"{where}: integer labels must be >= 0, found {min(raw)}")
            label_names = [str(i) for i in range(max(raw) + 1)]
            return list(raw), label_names
        raw = [str(v) for v in raw]  # mixed str and int: all are names
        label_names = _label_order(set(raw))
    names = [str(n) for n in label_names]
    if len(set(names)) != len(names):
        raise ValueError(f"label_names has duplicates: {names}")
    index = {n: i for i, n in enumerate(names)}
    ids = []
    for i, v in enumerate(raw):
        if isinstance(v, int):
            if not 0 <= v < len(names):
                raise ValueError(
                    f"{where}: example {i} has label id {v}, outside 0..{len(names) - 1} "
                    f"for label_names {names}"
                )
            ids.append(v)
        elif v in index:
            ids.append(index[v])
        else:
            raise ValueError(
                f"{where}: example {i} has unknown label {v!r}; known labels: {names} (a "
                "validation/test set must use the training set's label_names)"
            )
    return ids, names


def load_label_names(path: str | Path) -> list[str]:
    """The label list of a `labels.json` file (as written by `longseq data`)."""
    path = Path(path)
    if path.is_dir():
        path = path / "labels.json"
    names = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: expected a JSON list of label names")
    return names


# ----------------------------------------------------------------------------- datasets
class TextClassificationDataset(Dataset):
    """`[cls] text [sep]` ids truncated to `max_length`, and a label id, per example.

    Items are `{"input_ids": LongTensor (n,), "labels": LongTensor ()}`; `lengths` (for the
    bucketed sampler) and `label_names` (for the model config) are attributes.
    """

    def __init__(
        self,
        path: str | Path,
        tokenizer: Tokenizer | str | Path = "byte",
        max_length: int = 512,
        label_names: Sequence[str] | None = None,
        text_field: str = "text",
        label_field: str = "label",
    ) -> None:
        if max_length < 3:
            raise ValueError(f"max_length={max_length} leaves no room for text: use >= 3")
        self.tokenizer = load_tokenizer(tokenizer)
        self.max_length = max_length
        examples = read_examples(path, text_field, label_field)
        self.labels, self.label_names = resolve_labels(
            [label for _, label in examples], label_names, where=str(path)
        )
        cls = torch.tensor([self.tokenizer.cls_id], dtype=torch.int32)
        sep = torch.tensor([self.tokenizer.sep_id], dtype=torch.int32)
        self.input_ids = [
            torch.cat([cls, encode(self.tokenizer, text)[: max_length - 2], sep])
            for text, _ in examples
        ]
        self.lengths = [len(ids) for ids in self.input_ids]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[i].long(),
            "labels": torch.tensor(self.labels[i], dtype=torch.long),
        }


class LMDataset(Dataset):
    """Blocks of `block_size` tokens cut from one or more text files (see module docstring).

    Items are `{"input_ids": LongTensor (block_size,), "labels": same}`. `num_bytes` /
    `num_tokens` give the bytes per token of the corpus (bits per byte = nats per token *
    num_tokens / (num_bytes * ln 2)).
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        tokenizer: Tokenizer | str | Path = "byte",
        block_size: int = 1024,
        *,
        random_offset: bool = False,
        seed: int = 0,
    ) -> None:
        if block_size < 2:
            raise ValueError(f"block_size={block_size}: a block needs >= 2 tokens (one target)")
        self.tokenizer = load_tokenizer(tokenizer)
        self.block_size = block_size
        self.stride = block_size - 1
        self.random_offset = random_offset
        self.seed = seed
        files = [paths] if isinstance(paths, str | Path) else list(paths)
        if not files:
            raise ValueError("no text files given")
        pieces, self.num_bytes = [], 0
        eos = torch.tensor([self.tokenizer.sep_id], dtype=torch.int32)
        for k, file in enumerate(map(Path, files)):
            if not file.is_file():
                raise FileNotFoundError(f"no text file at {file}")
            data = file.read_bytes()
            self.num_bytes += len(data)
            if k:
                pieces.append(eos)  # a document boundary the model can see
            if isinstance(self.tokenizer, ByteTokenizer):
                pieces.append(encode(self.tokenizer, data))
            else:
                text = data.decode("utf-8", errors="replace")
                pieces.append(_encode_long_text(self.tokenizer, text))
        self.tokens = torch.cat(pieces)
        self.num_tokens = len(self.tokens)
        if self.num_tokens < block_size:
            raise ValueError(
                f"{', '.join(map(str, files))}: {self.num_tokens} tokens, fewer than "
                f"block_size={block_size}; use a smaller block_size or more text"
            )
        # Largest shift that keeps the block count the same for every offset.
        self.max_offset = min(self.stride - 1, self.num_tokens - block_size) if random_offset else 0
        self._len = (self.num_tokens - self.max_offset - block_size) // self.stride + 1
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's cut points (call before creating the epoch's DataLoader iterator)."""
        self.epoch = epoch
        if self.max_offset == 0:
            self.offset = 0
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self.offset = int(torch.randint(0, self.max_offset + 1, (), generator=g))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not -self._len <= i < self._len:
            raise IndexError(f"block {i} out of range for {self._len} blocks")
        i %= self._len
        start = self.offset + i * self.stride
        block = self.tokens[start : start + self.block_size].long()
        return {"input_ids": block, "labels": block}

    @property
    def lengths(self) -> list[int]:
        return [self.block_size] * self._len
