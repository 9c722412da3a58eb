"""longseq: Transformers for long sequences, in PyTorch."""

from longseq import attention

__version__ = "0.1.0"
__all__ = ["__version__", "attention"]
