"""longseq -> Hugging Face: the transformers model with the same outputs, and its folder.

    from longseq.convert.to_hf import to_huggingface, export_hf
    hf = to_huggingface(model)            # e.g. a transformers LongformerForMaskedLM
    export_hf(model, "out", tokenizer)    # config.json + model.safetensors (+ tokenizer files)

    longseq export MODEL OUT --format hf  # the same from the command line

Which architecture (`hf_family`): the one whose computation the config describes, read from
the config alone (a longified MiniLM with Longformer layers is a `LongformerModel`):

    every layer lsh-hf / local-hf, reversible concat        reformer
    full attention, RMSNorm, gated feed-forward, rotary    llama (causal)
    post-LN BERT body, every layer longformer               longformer
    post-LN BERT body, every layer bigbird-hf               big_bird, block_sparse
    post-LN BERT body, full, classifier act = hidden act    big_bird, original_full
    post-LN BERT body, full, position_offset = pad + 1      roberta
    post-LN BERT body, full                                 bert

A configuration none of them computes is refused, naming what differs (a mechanism HF does
not have, layers that mix mechanisms, a body option of another family).

The weights: each family's converter lists {longseq name: HF name} (the table `convert`
reads); export reads the same table the other way. Learned positions move between
numberings: longseq reads row `position_offset + i` for token i, HF row i (BERT, BigBird) or
`pad_token_id + 1 + i` (RoBERTa, Longformer). HF weights longseq has no counterpart for (the
pooler of a base BERT-family model) are written as zeros; segment embeddings of a model
without any are one zero row. `to_huggingface` then runs both models on a short padded
input and refuses a result whose outputs differ by more than 1e-4 (relative to the largest).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longseq.convert.common import HEADS
from longseq.convert.converters import CONVERTERS
from longseq.models import LongseqModel, ModelConfig

# longseq architecture -> HF class-name suffix (the base model: "Model")
SUFFIXES: dict[str, str] = {"encoder": "Model", **{v: k for k, v in HEADS.items()}}
# Why a mechanism has no Hugging Face architecture.
NO_HF: dict[str, str] = {
    "linformer": "transformers has no Linformer architecture",
    "lsh": (
        "longseq's own LSH (prefix-stable chunks, no wrap-around) is not Hugging Face "
        "Reformer's; the port 'lsh-hf' is"
    ),
    "local": "longseq's own local attention does not wrap around as Reformer's; 'local-hf' does",
    "bigbird": (
        "longseq's BigBird draws its own random blocks; Hugging Face's eval-mode BigBird uses "
        "block 0 for every random block (the port 'bigbird-hf'; a different model)"
    ),
}
CHECK_TOL = 1e-4  # relative to the largest output; float32 rounding is ~1e-6


def hf_family(config: ModelConfig) -> str:
    """The Hugging Face `model_type` that computes `config`'s model, or ValueError why none."""
    if config.global_tokens:
        raise ValueError(
            f"global_tokens={config.global_tokens} (the first positions global in every layer; "
            "attention sinks under a causal mask): no Hugging Face architecture has them"
        )
    if config.stem:
        raise ValueError(
            "a convolutional stem (conv_layers, conv_pool): no Hugging Face architecture has one"
        )
    mechanisms = [config.layer_spec(i)[0] for i in range(config.num_layers)]
    kinds = set(mechanisms)
    if kinds <= {"lsh-hf", "local-hf"}:
        return "reformer"
    if len(kinds) > 1:
        raise ValueError(
            f"the layers mix mechanisms ({', '.join(sorted(kinds))}); a Hugging Face "
            "architecture has one per model (only Reformer mixes its own lsh and local)"
        )
    (name,) = kinds
    if name in NO_HF:
        raise ValueError(f"{name!r} attention: {NO_HF[name]}")
    if config.position == "rotary" or config.norm_type == "rms" or config.feed_forward == "gated":
        if name != "full":
            raise ValueError(f"a Llama-style decoder with {name!r} attention: Llama is full")
        return "llama"
    if name == "longformer":
        return "longformer"
    if name == "bigbird-hf":
        return "big_bird"
    if name != "full":
        raise ValueError(f"{name!r} attention has no Hugging Face architecture")
    sequence = config.architecture == "sequence-classification"
    if sequence and config.classifier_activation != "tanh":
        return "big_bird"  # BigBird's classifier applies hidden_act, BERT's and RoBERTa's tanh
    if config.architecture == "question-answering" and config.qa_head == "bigbird":
        return "big_bird"
    offset = config.position_offset
    return "roberta" if offset and offset == config.pad_token_id + 1 else "bert"


def hf_class(config: ModelConfig, family: str) -> type[nn.Module]:
    """The transformers class of `config`'s head in `family` (e.g. LongformerForMaskedLM)."""
    import transformers

    module = importlib.import_module(CONVERTERS[family])
    name = module.hf_class_name(config)
    return getattr(transformers, name)


def to_huggingface(model: LongseqModel, check: bool = True) -> nn.Module:
    """The transformers model equal to `model` in eval mode (ValueError when none is)."""
    config = model.config
    family = hf_family(config)
    module = importlib.import_module(CONVERTERS[family])
    hf_config = module.hf_config(config)
    cls = hf_class(config, family)
    with torch.random.fork_rng():  # HF's random init (every weight is then overwritten)
        torch.manual_seed(0)
        hf = cls(hf_config).to(dtype=next(model.parameters()).dtype).eval()
    names, unused = module.weight_map(hf, config)
    fill(hf, model.state_dict(), names, unused, hf_offset=module.hf_position_offset(config))
    if check:
        check_outputs(model, hf, getattr(module, "check_length", lambda c: 19)(config))
        kind = getattr(hf_config, "attention_type", None)
        if kind is not None:  # HF's BigBird switches to full for a short input, and stays
            hf.base_model.set_attention_type(kind)
    return hf


def fill(
    hf: nn.Module,
    ours: dict[str, Tensor],
    names: dict[str, str],
    unused: list[str],
    hf_offset: int | None = None,
) -> None:
    """Copy ours[k] into HF's names[k] for every k; HF parameters no name reaches must be
    `unused` (written as zeros), or export refuses. Learned positions are renumbered from
    longseq's offset to `hf_offset` (HF's first real position)."""
    theirs = hf.state_dict()
    params = dict(hf.named_parameters())
    filled: set[str] = set()
    with torch.no_grad():
        for k, v in names.items():
            if v not in theirs:
                if torch.count_nonzero(ours[k]):  # e.g. a Reformer decoder bias HF lacks
                    raise ValueError(f"{k} is not zero, but {type(hf).__name__} has no {v}")
                continue
            src = ours[k]
            if k == "body.embeddings.position.weight" and hf_offset is not None:
                src = _renumber(src, theirs[v].shape[0], hf_offset)
            elif src.shape != theirs[v].shape:
                raise ValueError(
                    f"{k} {tuple(src.shape)} does not fit {v} {tuple(theirs[v].shape)}"
                )
            theirs[v].copy_(src)
            filled.add(v)
        ptr = {t.data_ptr() for n, t in theirs.items() if n in filled}
        for n, p in params.items():
            if n in filled or p.data_ptr() in ptr:
                continue
            if any(n == s or (s.endswith(".") and n.startswith(s)) for s in unused):
                p.zero_()
                continue
            raise ValueError(f"export leaves {type(hf).__name__}'s {n} without a source")


def _renumber(table: Tensor, rows: int, hf_offset: int) -> Tensor:
    """HF's position table from longseq's: HF row hf_offset + i = longseq row offset + i."""
    offset = table.shape[0] - (rows - hf_offset)  # longseq's position_offset
    out = table.new_zeros(rows, table.shape[1])
    out[hf_offset:] = table[offset:]
    lead = min(hf_offset, offset)  # rows before the first real position, where both have them
    if lead:
        out[hf_offset - lead : hf_offset] = table[offset - lead : offset]
    return out


def check_outputs(model: LongseqModel, hf: nn.Module, n: int = 19) -> float:
    """Largest difference of the two models' outputs on two short right-padded sequences
    (relative to the largest output); ValueError above CHECK_TOL."""
    cfg = model.config
    n = min(n, cfg.max_length)
    ids, mask = sample_inputs(cfg, n)
    was = model.training
    model.eval()
    with torch.no_grad():
        a, b = model(ids, attention_mask=mask), hf(input_ids=ids, attention_mask=mask)
    model.train(was)
    ours, theirs = _main_output(a), _main_output(b)
    real = mask.bool()
    if ours.dim() == 2 and ours.shape[1] != n:  # sequence-level logits
        real = torch.ones(ours.shape, dtype=torch.bool)
    diff = float((ours - theirs[..., : ours.shape[-1]])[real].abs().max())
    scale = max(float(ours[real].abs().max()), 1.0)
    if diff / scale > CHECK_TOL:
        raise ValueError(
            f"the exported {type(hf).__name__} differs from the model by {diff:.2e} "
            f"(largest output {scale:.2g}); not written"
        )
    return diff / scale


def sample_inputs(cfg: ModelConfig, n: int, batch: int = 2) -> tuple[Tensor, Tensor]:
    """Random ids (no special token among them) and a mask: the last row right-padded by a
    third unless the model is causal (HF's causal models pad on the left, or not at all); a
    model with `sep_token_id` gets a question of 3 tokens, then <sep><sep> and a final <sep>
    (the layout HF's Longformer QA asserts)."""
    g = torch.Generator().manual_seed(0)
    specials = {cfg.pad_token_id, cfg.cls_token_id, cfg.sep_token_id}
    low = min(max(s for s in specials if s is not None) + 1, cfg.vocab_size - 1)
    ids = torch.randint(low, cfg.vocab_size, (batch, n), generator=g)
    mask = torch.ones_like(ids)
    if not cfg.causal and batch > 1:
        mask[-1, n - n // 3 :] = 0
    if cfg.sep_token_id is not None and n >= 7:
        ids[:, [4, 5]] = cfg.sep_token_id
        ids[torch.arange(batch), mask.sum(1) - 1] = cfg.sep_token_id
    return ids.masked_fill(mask == 0, cfg.pad_token_id), mask


def _main_output(out: Any) -> Tensor:
    for name in ("start_logits", "logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value.float()
    raise ValueError(f"no output to compare in {type(out).__name__}")


def export_hf(model: LongseqModel, folder: str | Path, tokenizer: Any = None) -> nn.Module:
    """Write `model` as a Hugging Face folder: config.json, model.safetensors and, for a
    Hugging Face tokenizer (tokenizer.json), its files for `AutoTokenizer`."""
    hf = to_huggingface(model)
    out = Path(folder)
    hf.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None and getattr(tokenizer, "path", None) is not None:
        save_tokenizer(tokenizer, out)
    return hf


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json (PreTrainedTokenizerFast, the special tokens)."""
    from transformers import PreTrainedTokenizerFast

    specials = {f"{role}_token": tok for role, tok in tokenizer.special_tokens.items()}
    specials = {k: v for k, v in specials.items() if k in _HF_SPECIALS}
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer.path), **specials)
    fast.save_pretrained(folder)


_HF_SPECIALS = ("pad_token", "cls_token", "sep_token", "mask_token", "unk_token", "bos_token")


__all__ = ["NO_HF", "SUFFIXES", "check_outputs", "export_hf", "fill", "hf_family", "to_huggingface"]
