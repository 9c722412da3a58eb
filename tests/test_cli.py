"""The `longseq` command: help, version, errors, and `longseq patterns`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import longseq
from longseq import attention
from longseq.attention.dense import FullAttention
from longseq.attention.pictures import Panel, Picture
from longseq.cli import main
from longseq.viz import patterns

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: Path, min_bytes: int = 5000) -> None:
    """A real, non-blank PNG."""
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > min_bytes, (path, len(data))
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert float(np.std(img[..., :3])) > 0.05  # not a blank canvas


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "patterns" in out and "bench" in out


def test_bench_attention_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "attention", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--mechanisms", "--lengths", "--no-peers", "--device", "--max-memory-gb"):
        assert opt in out


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"longseq {longseq.__version__}"


def test_console_script():
    script = Path(sys.executable).with_name("longseq")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"longseq {longseq.__version__}"


def test_unknown_command_lists_valid_ones(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train-everything"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and "patterns" in err and "bench" in err


def test_unknown_mechanism_lists_valid_ones(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "attention", "--mechanisms", "longformer,performer", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "performer" in err
    for name in ("full", "longformer", "bigbird", "linformer", "lsh"):
        assert name in err
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.mark.parametrize(
    "bad",
    [
        ["--lengths", "0,128"],
        ["--lengths", "12x"],
        ["--hidden", "30", "--heads", "4"],
        ["--dtype", "fp8"],
        ["--repeats", "0"],
    ],
)
def test_bad_options_are_usage_errors(bad, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "attention", *bad, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "usage: longseq bench attention" in capsys.readouterr().err


def test_patterns_writes_pngs(tmp_path, capsys):
    assert main(["patterns", "--out", str(tmp_path), "--n", "32"]) == 0
    out = capsys.readouterr().out
    for name in (*attention.mechanisms(), "sheet"):  # local attention: the generic mask figure
        path = tmp_path / f"{name}.png"
        assert f"wrote {path}" in out
        check_png(path)


class _BrokenAttention(FullAttention):
    """Test-only: a mechanism whose picture fails (a mechanism still being written)."""

    name = "test-broken-picture"

    @classmethod
    def picture(cls, n: int) -> Picture:
        raise ImportError("not written yet")


def test_patterns_skip_a_broken_mechanism(tmp_path):
    attention.register(_BrokenAttention)
    try:
        warnings: list[str] = []
        names = [_BrokenAttention.name, "full"]
        written = patterns.draw_all(tmp_path, n=16, mechanisms=names, warn=warnings.append)
    finally:
        attention.unregister(_BrokenAttention.name)
    assert [p.name for p in written] == ["full.png", "sheet.png"]
    assert len(warnings) == 1
    assert _BrokenAttention.name in warnings[0] and "not written yet" in warnings[0]


def test_patterns_leave_the_callers_random_state(tmp_path):
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    patterns.draw_all(tmp_path, n=16, mechanisms=["linformer"])
    assert torch.equal(torch.rand(3), expected)


def test_category_colours():
    """Category i has one colour in every picture; shaded categories: light to dark blue."""
    parts = Panel("t", np.zeros((2, 2)), {1: "window", 2: "global token", 3: "random"})
    assert patterns._colours(parts) == ["#ffffff", "#1f77b4", "#d62728", "#2ca02c"]
    rounds = Panel("t", np.zeros((2, 2)), {1: "1 round", 2: "2 rounds"}, shaded=True)
    assert patterns._colours(rounds) == ["#ffffff", "#9ecae1", "#08519c"]
