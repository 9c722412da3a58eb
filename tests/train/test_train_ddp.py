"""Data parallel: `torchrun --nproc_per_node 2 ... longseq train` (gloo, CPU) follows the same
loss curve and reaches the same weights as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from longseq.data.collate import make_collate
from longseq.train import load_config, train
from longseq.train.data import BatchStream


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    rows = [
        {"text": ("to be or not " * (1 + i % 5))[: 8 + 7 * i % 50], "label": "ab"[i % 3 == 0]}
        for i in range(40)
    ]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _ids(batch):
    """The batch's sequences without their padding (which depends on the batch's longest)."""
    lengths = batch["attention_mask"].sum(1).tolist()
    return sorted(
        tuple(row[:n]) for row, n in zip(batch["input_ids"].tolist(), lengths, strict=True)
    )


def test_ranks_split_the_single_process_batches(docs):
    from longseq.data.datasets import TextClassificationDataset

    ds = TextClassificationDataset(docs / "train.jsonl", "byte", 64)
    collate = make_collate(ds.tokenizer, 1)

    def stream(rank, world):
        return BatchStream(
            ds,
            collate,
            batch_size=8,
            seed=3,
            rank=rank,
            world_size=world,
            mega_batch=2,
            num_workers=0,
            pin_memory=False,
        )

    one, r0, r1 = iter(stream(0, 1)), iter(stream(0, 2)), iter(stream(1, 2))
    for _ in range(12):  # more than an epoch (5 batches)
        b = next(one)
        assert _ids(b) == sorted(_ids(next(r0)) + _ids(next(r1)))
    with pytest.raises(ValueError, match="not divisible by the 2 processes"):
        BatchStream(
            ds,
            collate,
            batch_size=7,
            seed=0,
            rank=0,
            world_size=2,
            mega_batch=2,
            num_workers=0,
            pin_memory=False,
        )


def test_two_processes_match_one(tmp_path, docs):
    config = {
        # Longformer: its key_global.bias gets no gradient, which DDP must be told about
        "model": {
            "attention": "longformer",
            "attention_options": {"window": 8},
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 64,
            "dropout": 0.0,
        },
        "data": {
            "task": "classification",
            "train": str(docs / "train.jsonl"),
            "max_length": 64,
            "batch_size": 8,
            "mega_batch": 2,
        },
        "optim": {
            "lr": 3e-3,
            "max_steps": 4,
            "warmup_steps": 1,
            "grad_accum": 2,
            "weight_decay": 0.1,
        },
        "run": {
            "out": str(tmp_path / "two"),
            "log_every": 1,
            "tensorboard": False,
            "progress": False,
            "threads": 1,
        },
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "longseq.cli",
        "train",
        "--config",
        str(path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "2 process(es)" in proc.stderr

    one = train(load_config(path, [f"run.out={tmp_path / 'one'}"]))
    lines = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    two = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    single = [r["loss"] for r in one.history if r["kind"] == "train"]
    assert len(two) == len(single) == 4
    assert two == pytest.approx(single, abs=1e-5)
    assert single[0] != pytest.approx(single[-1], abs=1e-3)  # it did train
    w2 = load_file(tmp_path / "two" / "last" / "model.safetensors")
    w1 = load_file(tmp_path / "one" / "last" / "model.safetensors")
    # fp32 sums in another order (the all-reduce) differ in the last bits, and AdamW's update
    # m / sqrt(v) turns a near-zero gradient's rounding into up to ~lr-sized steps: 1.5e-5 on
    # one of 2,048 weights on some CPUs. A wrong reduction is off by ~lr = 3e-3 per step.
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-4)


SP_CASES = {
    "lm-longformer": (
        "lm",
        {"attention": "longformer", "attention_options": {"window": 8}, "position": "rotary"},
    ),
    "classification-bigbird": (
        "classification",
        {"attention": "bigbird", "attention_options": {"block_size": 4}},
    ),
    "classification-longformer-global": (
        "classification",
        {"attention": "longformer", "attention_options": {"window": 8}},
    ),
}


def _sp_config(tmp_path, docs, task, model, sp):
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 40)
    data = {"task": task, "train": str(text if task == "lm" else docs / "train.jsonl")}
    return {
        "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64,
                  "dropout": 0.0, **model},
        "data": {**data, "max_length": 32, "batch_size": 4, "mega_batch": 2},
        "optim": {"lr": 1e-3, "max_steps": 3, "warmup_steps": 1, "grad_accum": 2},
        "run": {"out": str(tmp_path / "two"), "log_every": 1, "tensorboard": False,
                "progress": False, "threads": 1, "sequence_parallel": sp},
    }  # fmt: skip


def _torchrun(path, nproc, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(nproc), "-m", "longseq.cli", "train", "--config", str(path), *extra]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _same_weights(a, b):
    w2, w1 = (
        load_file(a / "last" / "model.safetensors"),
        load_file(b / "last" / "model.safetensors"),
    )
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("case", "nproc"),
    [
        ("lm-longformer", 2),
        ("classification-bigbird", 2),
        # 2 x 2 processes: on the schedule (docs/testing.md); the 4-process layer and model
        # tests (tests/attention, tests/models) and the 2-process runs here cover it by default
        pytest.param("classification-longformer-global", 4, marks=pytest.mark.slow),
    ],
)
def test_sequence_parallel_matches_one_process(tmp_path, docs, case, nproc):
    """`torchrun --nproc_per_node N ... --set run.sequence_parallel=2`: each sequence split
    over two processes (with 4: two data-parallel groups of two); the loss curve and the final
    weights are one process's. The Longformer classifier's first token is global."""
    task, model = SP_CASES[case]
    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump(_sp_config(tmp_path, docs, task, model, 2)))
    proc = _torchrun(path, nproc)
    assert f"{nproc} process(es) on cpu (each sequence split over 2)" in proc.stderr
    one = train(load_config(path, [f"run.out={tmp_path / 'one'}", "run.sequence_parallel=1"]))
    lines = (tmp_path / "two" / "log.jsonl").read_text().splitlines()
    two = [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]
    single = [r["loss"] for r in one.history if r["kind"] == "train"]
    assert two == pytest.approx(single, abs=1e-5) and len(two) == 3
    _same_weights(tmp_path / "two", tmp_path / "one")


def test_resume_across_a_change_of_sequence_parallelism(tmp_path, docs):
    """Checkpoints are the same files: 2 steps in one process, then resumed by two processes
    sharing each sequence, end where 3 steps in one process end."""
    task, model = SP_CASES["lm-longformer"]
    path = tmp_path / "sp.yaml"
    path.write_text(yaml.safe_dump(_sp_config(tmp_path, docs, task, model, 2)))

    def stop_at_2(record):
        return record.get("kind") == "step" and record["step"] == 2

    train(load_config(path, ["run.sequence_parallel=1"]), callbacks=[stop_at_2])
    proc = _torchrun(path, 2, "--resume")
    assert "resumed at step 2" in proc.stderr
    train(load_config(path, [f"run.out={tmp_path / 'one'}", "run.sequence_parallel=1"]))
    _same_weights(tmp_path / "two", tmp_path / "one")


@pytest.mark.slow  # two launches of 2 processes (~16 s); report_error's rules run by default below
def test_a_user_error_under_torchrun_is_said_once(tmp_path, docs):
    """A run folder in use: every rank meets the error, the user reads it once. Through
    `longseq train --nproc-per-node 2`, nothing else: no launcher traceback, exit code 2.
    (Plain torchrun still prints its own failure summary after it.)"""
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_sp_config(tmp_path, docs, "classification",
                                              {"attention": "full"}, 1)))  # fmt: skip
    (tmp_path / "two" / "last").mkdir(parents=True)  # what an earlier run left
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ours = [sys.executable, "-m", "longseq.cli", "train", "--config", str(path),
            "--nproc-per-node", "2"]  # fmt: skip
    proc = subprocess.run(ours, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.count("already holds a checkpoint") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    theirs = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
              "2", "-m", "longseq.cli", "train", "--config", str(path)]  # fmt: skip
    proc = subprocess.run(theirs, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("already holds a checkpoint") == 1, proc.stderr


@pytest.fixture
def agent_store(monkeypatch):
    """torchrun's agent store and the environment a rank sees, in this process."""
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=5))
    env = {"TORCHELASTIC_USE_AGENT_STORE": "True", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(store.port), "TORCHELASTIC_RUN_ID": "t"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return store


def test_report_error_prints_what_rank_0_did_not(agent_store, monkeypatch, capsys):
    from longseq.train.distributed import report_error

    monkeypatch.setenv("RANK", "1")
    report_error("rank 1 alone", wait=0.2)  # rank 0 said nothing: rank 1 speaks
    assert capsys.readouterr().err == "error (rank 1): rank 1 alone\n"
    monkeypatch.setenv("RANK", "0")
    report_error("the config is bad")
    assert capsys.readouterr().err == "error: the config is bad\n"
    monkeypatch.setenv("RANK", "1")
    report_error("the config is bad", wait=0.2)  # the same: said once already
    assert capsys.readouterr().err == ""
    report_error("something else", wait=0.2)
    assert capsys.readouterr().err == "error (rank 1): something else\n"
