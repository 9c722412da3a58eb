"""BigBird -> longseq: BERT's body with block-sparse (or full) attention.

`attention_type="original_full"` converts to full attention. `"block_sparse"` converts to
the port `bigbird-hf` (`longseq.convert.hf_attention`) with HF's shape (ITC, 2 global blocks,
3 sliding blocks, `block_size`, `num_random_blocks`): the blocks HF's layer uses in eval mode,
where every "random" block is block 0, the layout of the whole block-padded input, and full
attention for inputs of n <= (5 + 2 r) * block_size tokens, as HF switches to there. Set
`"attention": "bigbird"` in the saved config.json to use longseq's own random blocks instead
(a different model: no parity).

Heads: base model, masked LM (BERT-style), sequence classification (classifier.dense, then
`hidden_act` (not tanh), then out_proj), token classification, and question answering
(`BigBirdForQuestionAnswering`, the head of the TriviaQA / Natural Questions checkpoints:
longseq's `qa_head="bigbird"`: an intermediate block before the span layer, the question
(up to the first `sep_token_id`) left out of the span with -1e6, and segment ids 0 for the
question and 1 for the context when none are given).

Export (`longseq.convert.to_hf`) reads the same tables the other way: `bigbird-hf` layers, or
full attention under a sequence classifier that applies the hidden activation, make a BigBird.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from longseq.convert import common
from longseq.convert.common import (
    activation,
    architecture_of,
    bert_family_config,
    bert_family_names,
    load_mapped,
)
from longseq.models import LongseqModel, ModelConfig, build_model

_QA = "qa_classifier."


def convert(hf_model: nn.Module) -> LongseqModel:
    c = hf_model.config
    arch = architecture_of(hf_model)
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
    qa = {}
    if arch == "question-answering":
        if c.sep_token_id is None:
            raise ValueError("BigBird QA finds the question by sep_token_id, which is None")
        qa = {"qa_head": "bigbird", "sep_token_id": c.sep_token_id}
    config = bert_family_config(
        hf_model,
        arch,
        attention=attention,
        attention_options=options,
        classifier_activation=activation(c.hidden_act),
        **qa,
    )
    names, unused = weight_map(hf_model, config)
    model = build_model(config, seed=0)
    return load_mapped(model, hf_model.state_dict(), names, unused, type(hf_model).__name__)


def weight_map(hf_model: nn.Module, config: ModelConfig) -> tuple[dict[str, str], list[str]]:
    """The converter's name table, which export reads the other way."""
    arch = config.architecture
    style = "bert" if arch == "masked-lm" else "roberta"  # cls.predictions; classifier.out_proj
    if arch == "question-answering":
        names, unused = bert_family_names(hf_model, config.replace(architecture="encoder"), style)
        for ours, theirs in (
            ("block.fc1", "intermediate.dense"),
            ("block.fc2", "output.dense"),
            ("block.norm", "output.LayerNorm"),
            ("qa", "qa_outputs"),
        ):
            for w in ("weight", "bias"):
                names[f"{ours}.{w}"] = f"{_QA}{theirs}.{w}"
    else:
        names, unused = bert_family_names(hf_model, config, style)
    return names, common.bert_family_unused(config, common.body_prefix(hf_model), unused)


# ----------------------------------------------------------------------- export (to_hf.py)
def check_length(config: ModelConfig) -> int:
    """A length past HF's switch to full attention (which HF then keeps: see test_parity)."""
    name, opts = config.layer_spec(0)
    if name != "bigbird-hf":
        return 19
    block = opts.get("block_size", 64)
    return (6 + 2 * opts.get("num_random_blocks", 3)) * block + 3


def hf_class_name(config: ModelConfig) -> str:
    return common.hf_class_name("BigBird", config)


def hf_position_offset(config: ModelConfig) -> int:
    return 0


def hf_config(config: ModelConfig) -> Any:
    from transformers import BigBirdConfig

    problems = common.bert_family_problems(config, (config.activation,))
    if len({repr(config.layer_spec(i)) for i in range(config.num_layers)}) > 1:
        problems.append("the layers' options differ (HF's BigBird has one block layout)")
    name, opts = config.layer_spec(0)
    fields: dict[str, Any] = {"attention_type": "original_full"}
    if name == "bigbird-hf":
        fields = {
            "attention_type": "block_sparse",
            "block_size": opts.get("block_size", 64),
            "num_random_blocks": opts.get("num_random_blocks", 3),
        }
    qa = config.architecture == "question-answering"
    if qa and config.qa_head != "bigbird":
        problems.append("qa_head='linear' (HF's BigBird QA head has the extra block: 'bigbird')")
    if not qa and config.qa_head != "linear":
        problems.append(f"qa_head={config.qa_head!r} outside question answering")
    common.refuse("BigBird", problems)
    return BigBirdConfig(
        **common.bert_family_hf_fields(config, config.max_length),
        **fields,
        rescale_embeddings=False,
        use_bias=True,
    )
