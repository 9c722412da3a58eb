"""Building blocks around attention: reversible residuals, chunked feed-forward, positions.

`layers` depends only on `longseq.attention` (never on models or training).
"""

from longseq.layers.feedforward import ChunkedFeedForward, FeedForward, apply_chunked
from longseq.layers.positions import (
    AxialPositions,
    LearnedPositions,
    RotaryEmbedding,
    apply_rotary,
    rotate_half,
)
from longseq.layers.reversible import ReversibleSequence

__all__ = [
    "AxialPositions",
    "ChunkedFeedForward",
    "FeedForward",
    "LearnedPositions",
    "ReversibleSequence",
    "RotaryEmbedding",
    "apply_chunked",
    "apply_rotary",
    "rotate_half",
]
