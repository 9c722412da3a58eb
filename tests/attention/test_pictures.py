"""Each mechanism's picture (`cls.picture(n)`): its parts are the layer's own pattern, and a
subclass registered under another name draws itself, with its parent's picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from longseq import attention
from longseq.attention.longformer import LongformerAttention
from longseq.attention.pictures import Picture
from longseq.viz import patterns


def test_longformer_parts_cover_the_layer_pattern():
    """The coloured parts are the layer's own pattern: nothing added, nothing lost."""
    pic = attention.get("longformer").picture(32)
    layer = attention.build("longformer", 16, 2, window=4)
    assert np.array_equal(pic.panels[0].image > 0, layer.pattern(32)[0].numpy())
    glob = pic.panels[2].image
    assert (glob[0] == 2).all() and (glob[:, 0] == 2).all()  # token 0 is global: red row, column
    assert (glob[1, 1:4] == 1).all() and glob[1, 10] == 0
    assert pic.panels[2].categories == {1: "window", 2: "global token"}


def test_bigbird_parts_are_the_layout_slots():
    bird = attention.get("bigbird").picture(32).panels[0].image
    assert set(np.unique(bird).tolist()) == {0, 1, 2, 3}  # none, sliding, global, random
    # the random panel's blocks are the layout's random slots of a layer built alike
    lay = attention.build("bigbird", 16, 2, block_size=4).layout(8)
    rnd = lay.index[0, :, -3:][lay.valid[0, :, -3:]]
    assert rnd.numel() and all((bird[4 * i : 4 * i + 4] == 3).any() for i in set(rnd.tolist()))


def test_bigbird_parts_must_add_up_to_the_pattern(monkeypatch):
    cls = attention.get("bigbird")
    monkeypatch.setattr(cls, "pattern", lambda self, n, is_global=None: torch.ones(2, n, n) > 0)
    with pytest.raises(RuntimeError, match="do not add up"):
        cls.picture(32)


def test_the_default_picture_is_the_token_mask():
    """A mechanism without a picture of its own (local attention): its pattern, bidirectional
    and causal, with the options its options_at derives from the reach scaled to n."""
    pic = attention.get("local").picture(32)
    layer = attention.build("local", 16, 2, chunk_length=4)  # reach 32 // 8
    assert pic.name == "local" and "chunk_length 4" in pic.title
    assert [p.categories for p in pic.panels] == [{1: "scored"}, {1: "scored"}]
    assert np.array_equal(pic.panels[0].image, layer.pattern(32).any(0).long().numpy())
    assert (np.triu(pic.panels[1].image, 1) == 0).all() and pic.panels[1].image.any()


class _LowerLongformer(LongformerAttention):
    """Test-only: a Longformer whose pattern keeps only the keys j <= i."""

    name = "test-lower-longformer"

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        return super().pattern(n, is_global).tril()


def _same_panels(a: Picture, b: Picture) -> bool:
    return len(a.panels) == len(b.panels) and all(
        p.title == q.title and p.categories == q.categories and np.array_equal(p.image, q.image)
        for p, q in zip(a.panels, b.panels, strict=True)
    )


def test_a_subclass_draws_itself_under_its_own_name(tmp_path):
    """No lookup by name: the registered subclass gets Longformer's picture (its parts, its
    layout), built from its own class (its own pattern), named after it."""
    attention.register(_LowerLongformer)
    try:
        pic = attention.get(_LowerLongformer.name).picture(32)
        warnings: list[str] = []
        written = patterns.draw_all(
            tmp_path, n=16, mechanisms=[_LowerLongformer.name], warn=warnings.append
        )
    finally:
        attention.unregister(_LowerLongformer.name)
    parent = LongformerAttention.picture(32)
    assert pic.name == _LowerLongformer.name and pic.title == parent.title
    heads = [p.title.splitlines()[0] for p in pic.panels]  # the second line: its density
    assert heads == [p.title.splitlines()[0] for p in parent.panels]
    assert pic.panels[2].categories == {1: "window", 2: "global token"}
    for mine, theirs in zip(pic.panels, parent.panels, strict=True):
        assert np.array_equal(mine.image, np.tril(theirs.image))
    assert not np.array_equal(parent.panels[0].image, np.tril(parent.panels[0].image))
    assert patterns._heading(pic).startswith(f"{_LowerLongformer.name}: Longformer")
    assert not warnings and [p.name for p in written] == [
        f"{_LowerLongformer.name}.png",
        "sheet.png",
    ]


@pytest.mark.parametrize("parent", ["bigbird", "linformer", "lsh"])
def test_a_renamed_subclass_gets_its_parents_picture(parent: str):
    base = attention.get(parent)
    sub = type("Renamed", (base,), {"name": f"test-renamed-{parent}"})
    attention.register(sub)
    try:
        torch.manual_seed(0)
        pic = attention.get(sub.name).picture(32)
    finally:
        attention.unregister(sub.name)
    torch.manual_seed(0)
    theirs = base.picture(32)
    assert pic.name == sub.name and theirs.name == parent
    assert pic.title == theirs.title and _same_panels(pic, theirs)
    assert not pic.title.startswith(f"{sub.name} attention")  # not the generic picture
