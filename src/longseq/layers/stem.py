"""A convolutional stem: local features per input position, then P inputs per attention position.

For inputs whose signal is local and dense, such as DNA one base per token (codons, splice
sites), `ConvStem` runs L residual 1-D convolutions of width k over the token embeddings

    h_0 = E[x],   h_l = h_{l-1} + conv_l(GELU(LN(h_{l-1})))      (l = 1 .. L, 'same' padding)

(layer l dilated by d^(l-1), WaveNet style, so L layers see 1 + (k - 1)(d^L - 1)/(d - 1)
inputs; d = 1: 1 + L(k - 1))

and, with `pool` P > 1, turns every P consecutive inputs into one position of the Transformer
by a strided convolution (kernel P, stride P): the attention then runs over n / P positions, so
16,384 bases are 2,048 positions at P = 8 (as BigBird's DNA tokens averaged 8.8 bp), and a
window of w positions reaches w * P inputs. `up` brings the Transformer's output back to one
vector per input, U-Net style, by repeating each position P times and mixing in the stem's
features of that input (its skip connection):

    y_i = LN(t_{i // P} + conv_up([t_{i // P}; h_L,i]))

Padded inputs (mask 0) are zeroed after every convolution, so they never feed a real one; a
length that is not a multiple of P is padded inside and cut again by `up`. The stem sees both
sides of each input: it is for encoders, not causal models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvStem(nn.Module):
    def __init__(
        self,
        hidden: int,
        layers: int,
        kernel: int,
        pool: int = 1,
        output: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.check(layers, kernel, pool, dilation)
        self.pool = pool
        pad = kernel // 2
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden, hidden, kernel, padding=pad * dilation**i, dilation=dilation**i)
            for i in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.down = nn.Conv1d(hidden, hidden, pool, stride=pool) if pool > 1 else None
        out = output or hidden
        # the way back: the position's output and the input's own stem features, mixed
        self.up = nn.Conv1d(out + hidden, out, kernel, padding=pad) if pool > 1 else None
        self.up_norm = nn.LayerNorm(out) if pool > 1 else None

    @staticmethod
    def check(layers: int, kernel: int, pool: int, dilation: int) -> None:
        """ValueError naming the config field that no stem can be built with."""
        if layers < 0:
            raise ValueError(f"conv_layers must be >= 0, got {layers}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd and positive ('same' padding), got {kernel}")
        if pool < 1:
            raise ValueError(f"conv_pool must be >= 1, got {pool}")
        if dilation < 1:
            raise ValueError(f"conv_dilation must be >= 1, got {dilation}")

    def pool_mask(self, mask: Tensor | None) -> Tensor | None:
        """A per-input mask (B, n) -> per position (B, ceil(n / P)): set where any of the
        position's inputs is (padded to a multiple of P with zeros)."""
        if mask is None or self.pool == 1:
            return mask
        mask = F.pad(mask, (0, -mask.shape[1] % self.pool))
        return mask.view(mask.shape[0], -1, self.pool).amax(-1)

    def forward(
        self, x: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """x (B, n, h) embeddings, mask (B, n) -> (positions (B, ceil(n / P), h), the inputs'
        mask padded to a multiple of P (None if none was given and none was needed), the
        stem's features (B, h, n_padded) for `unpool`)."""
        n = x.shape[1]
        pad = -n % self.pool
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
            if mask is None:
                mask = torch.ones(x.shape[0], n, dtype=torch.long, device=x.device)
            mask = F.pad(mask, (0, pad))
        keep = None if mask is None else mask.to(x.dtype).unsqueeze(1)  # (B, 1, n)
        h = x.transpose(1, 2)  # (B, h, n): Conv1d's layout
        if keep is not None:
            h = h * keep
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = h + conv(F.gelu(norm(h.transpose(1, 2)).transpose(1, 2)))
            if keep is not None:
                h = h * keep
        if self.down is None:
            return h.transpose(1, 2), mask, h
        return self.down(h).transpose(1, 2), mask, h

    def unpool(self, t: Tensor, skip: Tensor, n: int, mask: Tensor | None = None) -> Tensor:
        """The Transformer's output t (B, n / P, d) -> one vector per input (B, n, d); `mask`
        (B, n_padded) from `forward` zeroes padded inputs before they are mixed."""
        if self.up is None or self.up_norm is None:
            return t
        rep = t.repeat_interleave(self.pool, dim=1)  # (B, n_padded, d)
        if mask is not None:
            rep = rep * mask.to(rep.dtype).unsqueeze(-1)
        mixed = self.up(torch.cat((rep.transpose(1, 2), skip), dim=1)).transpose(1, 2)
        return self.up_norm(rep + mixed)[:, :n]


__all__ = ["ConvStem"]
