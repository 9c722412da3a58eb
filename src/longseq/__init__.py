"""longseq: Transformers for long sequences, in PyTorch."""

from longseq import attention

# Hugging Face's rules for converted checkpoints (convert/ sits above attention: by path, lazily)
_HF = "longseq.convert.hf_attention:"
attention.register_port("bigbird-hf", _HF + "HFBigBirdAttention", base="bigbird")
attention.register_port("lsh-hf", _HF + "HFLSHAttention", base="lsh")
attention.register_port("local-hf", _HF + "HFLocalAttention", base="local")

__version__ = "0.1.0"
__all__ = ["__version__", "attention"]
