"""The label of a position without a target: PyTorch's `cross_entropy(ignore_index=...)`.

Data pads labels with it, heads and the trainer skip it; defined once, here."""

IGNORE = -100

__all__ = ["IGNORE"]
