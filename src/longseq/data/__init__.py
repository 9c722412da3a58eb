"""Data: tokenizers, text-classification and language-modelling datasets, synthetic tasks.

Names are imported on first use, so `import longseq.data` (done by the CLI to build its
parser) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tokenizers": ("ByteTokenizer", "HFTokenizer", "Tokenizer", "load_tokenizer"),
    "datasets": (
        "LMDataset",
        "TextClassificationDataset",
        "load_label_names",
        "read_examples",
        "resolve_labels",
    ),
    "collate": ("BucketBatchSampler", "Collator", "MaskedLMCollator", "mask_tokens"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"longseq.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'longseq.data' has no attribute {name!r}")
