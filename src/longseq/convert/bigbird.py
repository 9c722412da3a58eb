"""BigBird -> longseq: BERT's body with block-sparse (or full) attention.

`attention_type="original_full"` converts to full attention. `"block_sparse"` converts to
the port `bigbird-hf` (`longseq.convert.hf_attention`) with HF's shape (ITC, 2 global blocks,
3 sliding blocks, `block_size`, `num_random_blocks`): the blocks HF's layer uses in eval mode,
where every "random" block is block 0, the layout of the whole block-padded input, and full
attention for inputs of n <= (5 + 2 r) * block_size tokens, as HF switches to there. Set
`"attention": "bigbird"` in the saved config.json to use longseq's own random blocks instead
(a different model: no parity).

Heads: base model, masked LM (BERT-style), sequence classification (classifier.dense, then
`hidden_act` (not tanh), then out_proj), token classification. HF's BigBird QA head (an extra
intermediate block and question masking) is not converted.
"""

from __future__ import annotations

from torch import nn

from longseq.convert.common import (
    HEADS,
    activation,
    architecture_of,
    bert_family_config,
    convert_bert_family,
)
from longseq.models import LongseqModel

BIGBIRD_HEADS = tuple(s for s in HEADS if s != "ForQuestionAnswering")


def convert(hf_model: nn.Module) -> LongseqModel:
    c = hf_model.config
    arch = architecture_of(hf_model, BIGBIRD_HEADS)
    if getattr(c, "rescale_embeddings", False):
        raise ValueError("BigBird with rescale_embeddings=True is not supported")
    if not getattr(c, "use_bias", True):
        raise ValueError("BigBird with use_bias=False is not supported (longseq layers: bias)")
    if c.attention_type == "original_full":
        attention, options = "full", {}
    elif c.attention_type == "block_sparse":
        attention = "bigbird-hf"
        options = {"block_size": c.block_size, "num_random_blocks": c.num_random_blocks}
    else:
        raise ValueError(
            f"attention_type {c.attention_type!r}; supported: 'block_sparse', 'original_full'"
        )
    config = bert_family_config(
        hf_model,
        arch,
        attention=attention,
        attention_options=options,
        classifier_activation=activation(c.hidden_act),
    )
    style = "bert" if arch == "masked-lm" else "roberta"  # cls.predictions; classifier.out_proj
    return convert_bert_family(hf_model, config, style=style)
