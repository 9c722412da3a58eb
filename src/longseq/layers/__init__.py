"""Building blocks around attention: reversible residuals, chunked feed-forward, positions,
the convolutional stem.

`layers` depends only on `longseq.attention` (never on models or training).
"""

from longseq.layers.feedforward import ChunkedFeedForward, FeedForward, apply_chunked
from longseq.layers.norms import NORM_TYPES, build_norm
from longseq.layers.positions import (
    AxialPositions,
    LearnedPositions,
    RotaryEmbedding,
    apply_rotary,
    rotate_half,
)
from longseq.layers.reversible import ReversibleSequence
from longseq.layers.stem import ConvStem

__all__ = [
    "NORM_TYPES",
    "AxialPositions",
    "ChunkedFeedForward",
    "ConvStem",
    "FeedForward",
    "LearnedPositions",
    "ReversibleSequence",
    "RotaryEmbedding",
    "apply_chunked",
    "apply_rotary",
    "build_norm",
    "rotate_half",
]
