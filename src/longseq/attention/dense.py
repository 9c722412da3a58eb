"""Full softmax attention, the O(n^2) baseline every other mechanism is measured against.

    out_i = sum_j softmax_j(q_i . k_j / sqrt(d) over allowed j) v_j

allowed j: real (non-padding) keys, and j <= i when causal. Runs on PyTorch's
`scaled_dot_product_attention`, which picks a fused kernel where it can.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longseq.attention import ops, patterns
from longseq.attention.base import SelfAttention
from longseq.attention.cache import SlotCache
from longseq.attention.shard import Shard


class FullAttention(SelfAttention):
    name = "full"
    baseline = True
    sequence_parallel = True

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        q, k, v = self.project(hidden_states, expand=False)  # SDPA reads the KV heads
        p = self.dropout if self.training else 0.0
        return ops.dense_attention(q, k, v, real, self.causal, p)

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Shard
    ) -> Tensor:
        """Every rank's keys and values all-gathered; this rank's queries scored against them
        (memory O(n) for K, V; scores O(n/W x n))."""
        b, n = hidden_states.shape[:2]
        dev = hidden_states.device
        qpos = shard.start + torch.arange(n, device=dev)
        q, k, v = self.project(hidden_states, qpos.expand(b, n))
        keys, values = shard.gather(k, 2), shard.gather(v, 2)
        real_k = shard.gather(real.to(q.dtype), 1) > 0
        kpos = torch.arange(shard.total, device=dev)
        allowed = real_k[:, None, None, :]
        if self.causal:
            allowed = allowed & (kpos <= qpos[:, None])
        # the diagonal keeps a padding query from having an empty row (its output is zeroed)
        allowed = allowed | (kpos == qpos[:, None])
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=allowed, dropout_p=p, scale=1.0
        )

    def dense_up_to(self, limit: int) -> int:
        return limit

    def new_cache(self) -> SlotCache:
        """Every earlier position (a key/value cache): O(t) per new token."""
        self._check_cacheable()
        return SlotCache()

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        mod = patterns.causal() if self.causal else patterns.full()
        return patterns.materialize(mod, n).expand(self.num_heads, n, n)
