"""The training loop: `train(config) -> TrainResult`, on one process or many (torchrun).

One optimiser step takes `grad_accum` micro-batches per process. Every micro-batch's mean
loss is weighted by its share of the step's loss items (sequences for classification, target
tokens for LM / MLM), counted over all micro-batches and processes before the forward pass:

    gradient = sum over ranks r, micro-batches m of  n_rm / N * grad(mean loss_rm)

which is the gradient of the mean loss over the whole step's items, whatever the world size,
accumulation or padding. DDP averages over ranks, so each rank backpropagates
loss_rm * n_rm * world_size / N.

Parameters that receive no gradient (Longformer's `key_global.bias`, which cancels in the
softmax, and all its global projections when a task has no global tokens) are found by one
probe step at start-up and frozen, in one process as under DDP. This costs nothing per step,
where DDP's `find_unused_parameters=True` searches the autograd graph after every forward,
and it keeps single-process and DDP runs identical (a zero gradient is not the same as none:
AdamW would still move the parameter). `run.find_unused_parameters: true` is there for a
model whose unused set changes from batch to batch.

Exact resume: a checkpoint stores the weights, the optimiser, scheduler and GradScaler, every
process's RNG states and the data position (epoch, batch index); the batch stream is a pure
function of (seed, epoch, index) and nothing else draws from the global RNG, so a resumed run
repeats the uninterrupted one bit for bit (same device, threads and world size).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from longseq.attention.shard import Shard
from longseq.data.collate import dataset_lengths, make_collate
from longseq.models import CONFIG_NAME, WEIGHTS_NAME, ModelConfig, build_model
from longseq.models.base import read_weights
from longseq.train import checkpoint as ckpt
from longseq.train import distributed, memory
from longseq.train.config import LOWER_IS_BETTER, TrainConfig, as_config, resume_differences
from longseq.train.data import (
    BatchStream,
    TaskData,
    build_task_data,
    eval_loader,
    resolve_tokenizer,
)
from longseq.train.evaluation import evaluate, model_inputs
from longseq.train.logger import RunLogger
from longseq.train.optim import build_optimizer, build_scheduler

Callback = Callable[[dict[str, Any]], Any]


@dataclass
class TrainResult:
    """What `train` returns. `evals` lists every validation record (step, loss, metrics);
    `best` is the best of them by `metric`; `test` the test split's metrics with the best
    weights. `model` holds the best weights when there was an evaluation, else the last."""

    out_dir: Path
    step: int
    metric: str
    evals: list[dict[str, Any]]
    best: dict[str, Any] | None
    test: dict[str, Any] | None
    train_loss: float | None
    tokens_per_second: float
    train_seconds: float
    peak_memory_bytes: int | None  # CUDA: max allocated; None on CPU (see peak_rss_bytes)
    peak_rss_bytes: int  # the process's peak resident memory (whole process lifetime)
    stopped_early: bool
    model_config: Any
    model: nn.Module = field(repr=False)
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def best_dir(self) -> Path | None:
        return self.out_dir / "best" if self.best is not None else None

    @property
    def last_dir(self) -> Path:
        return self.out_dir / "last"


def train(
    config: TrainConfig | dict[str, Any] | str | Path,
    *,
    resume: bool = False,
    train_dataset: Any = None,
    val_dataset: Any = None,
    test_dataset: Any = None,
    tokenizer: Any = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train as `config` says (a TrainConfig, its dict, or a YAML/JSON path).

    Datasets given here replace the files of `config.data` (items: {"input_ids", "labels"};
    a `lengths` attribute speeds up bucketing). `resume=True` continues from OUT/last if it
    exists (else starts afresh). Each callback is called with every log record and after
    every optimiser step with {"kind": "step", "step", "epoch", "batch"}; returning True
    stops the run (it saves and evaluates as at the end).
    """
    cfg = as_config(config)
    dist = distributed.setup(cfg.run.device)
    try:
        with run_lock(Path(cfg.run.out), dist.is_main):
            trainer = _Trainer(cfg, dist, tokenizer, (train_dataset, val_dataset, test_dataset))
            return trainer.fit(resume=resume, callbacks=callbacks)
    finally:
        dist.close()


LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(out: Path, is_main: bool = True) -> Any:
    """Hold an OS lock on the run folder (rank 0): a second run on it is refused, naming the
    process that holds it. The lock goes with the process, however it ends."""
    if not is_main:
        yield
        return
    # POSIX only: imported where the lock is taken
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_NAME
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ValueError(
                f"{out} is in use by {holder} (a longseq run writing there); wait for it to "
                "end, or choose another run.out"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        dist: distributed.Distributed,
        tokenizer: Any,
        datasets: tuple[Any, Any, Any],
    ) -> None:
        self.cfg, self.dist = cfg, dist
        self.device = dist.device
        run = cfg.run
        if run.precision == "fp16" and self.device.type != "cuda":
            raise ValueError(
                "run.precision=fp16 needs a CUDA device (fp16 training needs a GradScaler, "
                "which is CUDA-only here); use bf16 or fp32 on CPU"
            )
        bf16_gpu = run.precision == "bf16" and self.device.type == "cuda"
        if bf16_gpu and not torch.cuda.is_bf16_supported():
            raise ValueError("run.precision=bf16: this GPU has no bfloat16; use fp16")
        if run.threads:
            torch.set_num_threads(run.threads)
        self.out = Path(run.out)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(run.precision)
        init_from = cfg.model.get("init_from")
        self.tokenizer = resolve_tokenizer(cfg.data, init_from, tokenizer)
        self.data: TaskData = build_task_data(
            cfg.data,
            seed=run.seed,
            tokenizer=self.tokenizer,
            train=datasets[0],
            val=datasets[1],
            test=datasets[2],
        )
        self.model, notes = build_training_model(cfg, self.data)
        self.notes = notes
        self.model.to(self.device)
        self.arch = self.model.config.architecture
        multiple = self.model.pad_multiple(cfg.data.max_length)
        # sequence parallelism: the ranks of a group share each batch, each its shard
        self.sp, self.sp_group = run.sequence_parallel, None
        dp_rank, dp_size = dist.rank, dist.world_size
        if self.sp > 1:
            dp_rank, dp_size, self.sp_group = self._sequence_parallel_setup()
        self.collate = make_collate(self.tokenizer, multiple * self.sp)
        self.stream = BatchStream(
            self.data.train,
            self.collate,
            batch_size=cfg.data.batch_size,
            seed=run.seed,
            rank=dp_rank,
            world_size=dp_size,
            mega_batch=cfg.data.mega_batch,
            num_workers=run.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        self._check_memory(multiple * self.sp, dp_size)

    def _check_memory(self, multiple: int, dp_size: int) -> None:
        """Refuse a run whose training step cannot fit in memory (`memory.estimate`), before
        the first batch is allocated: the longest training sequence, padded as the collate
        pads it, in a micro-batch of this process (its shard under sequence parallelism)."""
        longest = max(dataset_lengths(self.data.train), default=1)
        length = -(-min(longest, self.cfg.data.max_length) // multiple) * multiple // self.sp
        batch = max(1, self.cfg.data.batch_size // dp_size)
        est = memory.estimate(self.model, length, batch, self.device, self._autocast())
        if not est.fits:
            raise ValueError(
                memory.refusal(est, self.cfg.data.max_length, self.cfg.data.batch_size)
            )

    def _sequence_parallel_setup(self) -> tuple[int, int, Any]:
        sp = self.sp
        if -(-self.cfg.data.max_length // sp) * sp > self.model.config.max_length:
            raise ValueError(
                f"run.sequence_parallel={sp}: padding data.max_length={self.cfg.data.max_length}"
                f" to a multiple of {sp} passes the model's max_length "
                f"{self.model.config.max_length}"
            )
        return self.dist.sequence_groups(sp)

    def _shard(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """This rank's positions of every sequence of a (device) batch, and its Shard."""
        n = batch["input_ids"].shape[1]
        if n % self.sp:
            raise ValueError(f"batch length {n} is not a multiple of run.sequence_parallel")
        m = n // self.sp
        shard = Shard(m, self.sp_group)
        cut = {}
        for k, v in batch.items():
            per_token = v.dim() == 2 and v.shape[1] == n
            cut[k] = v[:, shard.start : shard.start + m] if per_token else v
        return cut, shard

    # ------------------------------------------------------------------------- set-up
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return model_inputs(self.model, batch, self.device, non_blocking=True)

    def _freeze_unused(self) -> list[str]:
        """One probe forward/backward (RNG untouched): freeze what gets no gradient anywhere."""
        per_rank = self.cfg.data.batch_size // self.dist.world_size
        first = next(iter(self.stream.sampler.global_batches()))[:per_rank]
        batch = self._to_device(self.collate([self.data.train[i] for i in first]))
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            with self._autocast():
                loss = self.model(**batch).loss
            loss.backward()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        used = torch.tensor(
            [p.grad is not None for _, p in named], dtype=torch.float32, device=self.device
        )
        self.dist.all_reduce(used)  # used on any rank counts as used
        frozen = []
        for (name, p), u in zip(named, used.tolist(), strict=True):
            p.grad = None
            if not u:
                p.requires_grad_(False)
                frozen.append(name)
        return frozen

    # ------------------------------------------------------------------------- steps
    def _step(self, micro: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimiser step; returns (this rank's share of the mean loss, grad norm)."""
        counts = [self.model.loss_items(b) for b in micro]  # the head's own rule
        totals = torch.tensor(
            [sum(counts), sum(int(b["attention_mask"].sum()) for b in micro)],
            dtype=torch.float64,
            device=self.device,
        )
        self.dist.all_reduce(totals)
        # the ranks of a sequence-parallel group share their batch: counted once each
        n_total, self.step_tokens = float(totals[0]), float(totals[1]) / self.sp
        if n_total == 0:
            raise ValueError("a training step has no loss targets (empty labels); check the data")
        loss_share = torch.zeros((), device=self.device)
        for i, (batch, n) in enumerate(zip(micro, counts, strict=True)):
            last = i == len(micro) - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync:
                with self._autocast():
                    inputs = self._to_device(batch)
                    if self.sp > 1:
                        inputs, shard = self._shard(inputs)
                        out = self.net(**inputs, shard=shard)
                    else:
                        out = self.net(**inputs)
                # the mean over the step's items; under sequence parallelism each group's ranks
                # all count the same items (n_total holds them sp times) and DDP's average over
                # the group gives the group's gradient (see attention/shard.py)
                loss = out.loss * (n * self.dist.world_size / n_total)
                self.scaler.scale(loss).backward()
            loss_share += out.loss.detach().float() * (n / n_total)
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.optim.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(
            self.params, clip if clip and clip > 0 else float("inf")
        )
        if not self.scaler.is_enabled():  # fp16: the GradScaler skips such steps itself
            # the norm is of the all-reduced gradients: every rank decides alike
            checks = torch.stack([norm.detach().float(), loss_share.detach().float()])
            bad = (~torch.isfinite(checks)).tolist()
            if any(bad):
                what = "gradient norm" if bad[0] else "loss"
                raise FloatingPointError(
                    f"step {self.state.step + 1}: the {what} is {float(checks[int(not bad[0])])} "
                    "(before the optimiser step; the weights are untouched and nothing was "
                    f"saved after step {self.saved_step}): lower optim.lr, raise "
                    "optim.warmup_steps or set optim.grad_clip"
                )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_share, norm.detach().float()

    # ------------------------------------------------------------------------- evaluation
    def evaluate(self, dataset: Any) -> dict[str, Any]:
        """Metrics over `dataset` (`evaluation.evaluate`; every example once over all ranks,
        or run.eval_batches batches of it)."""
        run = self.cfg.run
        per_rank = max(
            1, (self.cfg.data.eval_batch_size or self.cfg.data.batch_size) // self.dist.world_size
        )
        loader = eval_loader(
            dataset,
            self.collate,
            batch_size=per_rank,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            max_batches=run.eval_batches,
            num_workers=run.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        return evaluate(
            self.model,
            loader,
            tokenizer=self.tokenizer,
            to_device=self._to_device,
            autocast=self._autocast,
            all_reduce=self.dist.all_reduce,
        )

    # ------------------------------------------------------------------------- saving
    def _state(self) -> dict[str, Any]:
        return {
            **self.state.to_dict(),
            "epoch": self.stream.epoch,
            "batch": self.stream.index,
            "world_size": self.dist.world_size,
            "frozen": self.frozen,
            "config": self.cfg.to_dict(),  # what resume compares its settings with
        }

    def _check_weights(self) -> None:
        """Raise before a save if a weight is not finite (a diverging run is never saved)."""
        named = list(self.model.named_parameters())
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named])
        if not bool(finite.all()):  # one device sync, then the first offender's name
            name = named[int((~finite).nonzero()[0])][0]
            raise FloatingPointError(
                f"step {self.state.step}: parameter {name} is not finite; not saved (the last "
                f"checkpoint is step {self.saved_step}): lower optim.lr"
            )

    def save_last(self) -> None:
        self._check_weights()
        rng = ckpt.capture_rng()
        gathered: list[Any] = [rng]
        if self.dist.enabled:
            gathered = [None] * self.dist.world_size
            torch.distributed.gather_object(rng, gathered if self.dist.is_main else None, dst=0)
        if self.dist.is_main:
            ckpt.save_checkpoint(
                self.out / "last",
                model=self.model,
                tokenizer=self.tokenizer,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                state=self._state(),
                rng=gathered,
            )
        self.saved_step = self.state.step

    def save_best(self, record: dict[str, Any]) -> None:
        self._check_weights()
        self.best_state = {
            k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
        }
        if self.dist.is_main:
            tmp = self.out / "best.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            self.model.save_pretrained(tmp, tokenizer=self.tokenizer)
            (tmp / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
            if (self.out / "best").exists():
                shutil.rmtree(self.out / "best")
            tmp.rename(self.out / "best")

    # ------------------------------------------------------------------------- the run
    def _prepare_out(self, resume: bool) -> bool:
        """Check the output folder; return whether a checkpoint will be resumed."""
        last = self.out / "last"
        if resume:
            if self.dist.is_main:  # the newest complete checkpoint a crash left, back at last/
                ckpt.recover(last, log=lambda t: print(t, file=sys.stderr))
            self.dist.barrier()
            if ckpt.verify(last) is not None:
                return True
            earlier = [
                p.name
                for p in (*(last.with_name("last" + x) for x in ckpt.SUFFIXES), self.out / "best")
                if p.exists()
            ]
            if earlier:  # never start afresh over what an earlier run left
                raise ValueError(
                    f"--resume: no complete checkpoint in {self.out}, but it holds "
                    f"{', '.join(earlier)} from an earlier run; set run.overwrite=true to "
                    "start over there, or choose another run.out"
                )
            if self.dist.is_main:
                print(
                    f"warning: --resume: no checkpoint in {last}; starting afresh", file=sys.stderr
                )
        elif last.exists() and not self.cfg.run.overwrite:
            raise ValueError(
                f"{self.out} already holds a checkpoint ({last}); pass --resume to continue it, "
                "choose another run.out, or set run.overwrite=true to start over"
            )
        if self.dist.is_main:
            for name in ("last", "best", "tensorboard"):
                if (self.out / name).exists():
                    shutil.rmtree(self.out / name)
        return False

    def fit(self, resume: bool, callbacks: Sequence[Callback]) -> TrainResult:
        """Set up (or resume), then the loop: a step, a train record every log_every steps,
        validation and the best checkpoint every eval_every, `last` every save_every; then
        the test split with the best weights."""
        cfg = self.cfg
        resuming, rng_note = self._start(resume)
        log = RunLogger(
            self.out,
            enabled=self.dist.is_main,
            tensorboard=cfg.run.tensorboard,
            progress=cfg.run.progress,
            total_steps=cfg.optim.max_steps,
            start_step=self.state.step if resuming else 0,
        )
        self._wrap_ddp()
        self.model.train()
        history: list[dict[str, Any]] = []

        def emit(record: dict[str, Any]) -> bool:
            log.write(record)
            if record["kind"] in ("train", "eval"):
                history.append(record)
            return any(bool(cb(record)) for cb in callbacks)

        st = self.state
        self._announce(log, f"resumed at step {st.step}{rng_note}" if resuming else "started")
        window = _Window(self.device)
        stopped_early = stop = False
        batches = iter(self.stream)
        opt = cfg.optim
        while self.state.step < opt.max_steps and not stop:
            t0 = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]  # this step's rate
            loss_share, norm = self._step([next(batches) for _ in range(opt.grad_accum)])
            self.state.step += 1
            self.state.tokens_seen += self.step_tokens
            is_log = self.state.step % cfg.run.log_every == 0 or self.state.step == opt.max_steps
            if is_log and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            self.state.train_time += dt
            window.add(loss_share, norm, self.step_tokens, dt)
            if is_log:
                stop |= emit(self._train_record(window, lr))
                log.step(window.steps, loss=f"{self.last_loss:.4f}", tok_s=f"{window.rate:.0f}")
                window.reset()
            if self.data.val is not None and (
                self.state.step % cfg.run.eval_every == 0
                or self.state.step == opt.max_steps
                or stop
            ):
                record = self._validate()
                stop |= emit(record)
                if cfg.run.patience is not None and self.state.bad_evals >= cfg.run.patience:
                    log.message(
                        f"early stop at step {st.step}: val {cfg.metric} has not improved for "
                        f"{st.bad_evals} evaluations (best {st.best[cfg.metric]:.4f} at "
                        f"step {st.best['step']})",
                        st.step,
                    )
                    stopped_early = stop = True
            save_every = cfg.run.save_every or cfg.run.eval_every
            if self.state.step % save_every == 0 or self.state.step == opt.max_steps or stop:
                self.save_last()
            event = {
                "kind": "step",
                "step": self.state.step,
                "epoch": self.stream.epoch,
                "batch": self.stream.index,
            }
            stop |= any(bool(cb(event)) for cb in callbacks)
        if self.saved_step != self.state.step:
            self.save_last()
        test = self._test(emit)
        log.close()
        return self._result(test, stopped_early, history)

    # ------------------------------------------------------------------------- fit's parts
    def _start(self, resume: bool) -> tuple[bool, str]:
        """Seeds, frozen parameters, optimiser, schedule and scaler, and the state of a
        resumed run; returns (resuming, a note on the RNG when it could not be restored)."""
        cfg, dist = self.cfg, self.dist
        resuming = self._prepare_out(resume)
        dist.barrier()
        # The same dropout masks on every rank would be harmless, but distinct ones are the
        # usual choice; the model itself was built from run.seed alone (identical on all ranks).
        seed = cfg.run.seed + dist.rank
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        self.frozen = [] if cfg.run.find_unused_parameters else self._freeze_unused()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.run.precision == "fp16")
        self.state = TrainState()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_loss: float | None = None
        rng_note = self._restore(seed) if resuming else ""
        self.saved_step = self.state.step
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "config.yaml")
        return resuming, rng_note

    def _restore(self, seed: int) -> str:
        """Load `last` into the model, optimiser and stream (refusing changed settings)."""
        cfg, dist = self.cfg, self.dist
        state = ckpt.load_checkpoint(
            self.out / "last",
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            rank=dist.rank,
            world_size=dist.world_size,
            device=self.device,
        )
        saved = state.get("config")
        if saved is not None:
            refused, allowed = resume_differences(saved, cfg.to_dict())
            if refused:
                raise ValueError(
                    f"--resume: {self.out / 'last'} was trained with other settings; "
                    "change them back, or start a new run.out:\n  " + "\n  ".join(refused)
                )
            if allowed and dist.is_main:
                print("resume: changed " + "; ".join(allowed), file=sys.stderr)
        if state["frozen"] != self.frozen:
            raise ValueError(
                f"the checkpoint froze {state['frozen']} but this run freezes "
                f"{self.frozen}: the model or data changed since it was saved"
            )
        self.state = TrainState.from_dict(state)
        self.stream.epoch, self.stream.index = state["epoch"], state["batch"]
        if state["rng_restored"]:
            return ""
        torch.manual_seed(seed + 7919 * self.state.step)
        return (
            f" (saved by {len(state['rng'])} process(es), run by {dist.world_size}: "
            "RNG reseeded, the run will not repeat bit for bit)"
        )

    def _wrap_ddp(self) -> None:
        self.ddp = None
        self.net: nn.Module = self.model
        if self.dist.enabled:
            # No running statistics among the buffers: nothing to broadcast every forward.
            no_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                else {"broadcast_buffers": False}
            )
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.run.find_unused_parameters,
                **no_sync,
            )
            self.net = self.ddp
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _announce(self, log: RunLogger, start: str) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        log.message(
            f"{start}: {self.arch} {self.model.config.attention}, {n_params:,} parameters, "
            f"{self.dist.world_size} process(es) on {self.device.type}"
            f"{f' (each sequence split over {self.sp})' if self.sp > 1 else ''}, "
            f"{self.stream.batches_per_epoch} batches per epoch per process",
            self.state.step,
        )
        for note in self.notes:
            log.message(note, self.state.step)
        if self.frozen:  # expected (see the module docstring): a count here, names in the log
            log.message(
                f"{len(self.frozen)} parameter(s) get no gradient with this model and data (e.g. "
                "global-token projections when no token is global) and are not trained; "
                f"names in {log.path}",
                self.state.step,
            )
            names = f"not trained (no gradient in the probe step): {self.frozen}"
            log.write({"kind": "info", "step": self.state.step, "message": names})

    def _train_record(self, window: _Window, lr: float) -> dict[str, Any]:
        """The mean loss and gradient norm since the last record (loss over all ranks)."""
        stats = torch.stack([window.loss, window.norm]).double()
        self.dist.all_reduce(stats[:1])
        loss, gnorm = (stats / window.steps).tolist()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at step {self.state.step}: lower optim.lr, "
                "raise optim.warmup_steps or set optim.grad_clip"
            )
        self.last_loss = loss
        return {
            "kind": "train",
            "step": self.state.step,
            "epoch": self.stream.epoch + self.stream.index / self.stream.batches_per_epoch,
            "loss": loss,
            "lr": lr,
            "grad_norm": gnorm,
            "tokens_per_s": window.rate,
            "elapsed": self.state.train_time,
        }

    def _validate(self) -> dict[str, Any]:
        """Evaluate on val; keep and save the best."""
        metric = self.cfg.metric
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        record = {"kind": "eval", "split": "val", "step": self.state.step}
        record.update(self.evaluate(self.data.val))
        record["elapsed"] = self.state.train_time
        self.state.evals.append(record)
        if self.state.best is None or sign * record[metric] > sign * self.state.best[metric]:
            self.state.best, self.state.bad_evals = record, 0
            self.save_best(record)
        else:
            self.state.bad_evals += 1
        return record

    def _test(self, emit: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """The test split with the best weights (the last ones without validation)."""
        if self.state.best is not None:
            if self.best_state is None and (self.out / "best").is_dir():
                self.model.load_weights(self.out / "best" / WEIGHTS_NAME)
            elif self.best_state is not None:
                self.model.load_state_dict(self.best_state)
        if self.data.test is None:
            return None
        test: dict[str, Any] = {"kind": "eval", "split": "test", "step": self.state.step}
        if self.state.best is not None:
            test["best_step"] = self.state.best["step"]
        test.update(self.evaluate(self.data.test))
        emit(test)
        return test

    def _result(
        self, test: dict[str, Any] | None, stopped_early: bool, history: list[dict[str, Any]]
    ) -> TrainResult:
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        st = self.state
        return TrainResult(
            out_dir=self.out,
            step=self.state.step,
            metric=self.cfg.metric,
            evals=list(self.state.evals),
            best=self.state.best,
            test=test,
            train_loss=self.last_loss,
            tokens_per_second=(st.tokens_seen / st.train_time) if st.train_time else 0.0,
            train_seconds=self.state.train_time,
            peak_memory_bytes=peak,
            peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            stopped_early=stopped_early,
            model_config=self.model.config,
            model=self.model,
            history=history,
        )


@dataclass
class TrainState:
    """What a run has done so far, saved in every checkpoint as one unit (with the weights,
    the optimiser, the RNG states and the data position, see `checkpoint.py`)."""

    step: int = 0
    tokens_seen: float = 0.0
    train_time: float = 0.0
    best: dict[str, Any] | None = None  # the best validation record so far
    bad_evals: int = 0  # validations since the best (early stopping)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainState:
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


class _Window:
    """Sums over the steps since the last train record (on the device: no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.norm = torch.zeros((), device=device)
        self.reset()

    def add(self, loss: torch.Tensor, norm: torch.Tensor, tokens: float, seconds: float) -> None:
        self.loss += loss
        self.norm += norm
        self.steps += 1
        self.tokens += tokens
        self.seconds += seconds

    def reset(self) -> None:
        self.loss.zero_()
        self.norm.zero_()
        self.steps, self.tokens, self.seconds = 0, 0.0, 0.0

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# ----------------------------------------------------------------------------- the model
def build_training_model(cfg: TrainConfig, data: TaskData) -> tuple[nn.Module, list[str]]:
    """The model the task needs: fields the model section leaves out come from the data;
    `init_from` loads a saved model's weights (the body must fit; a new head starts fresh)."""

    spec = dict(cfg.model)
    init_from = spec.pop("init_from", None)
    arch = data.task.architecture
    tok = data.tokenizer
    fields: dict[str, Any]
    if init_from is not None:
        source = Path(init_from)
        if not (source / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"model.init_from={init_from}: no {CONFIG_NAME} there")
        fields = ModelConfig.load(source / CONFIG_NAME).to_dict()
    else:
        fields = {
            "vocab_size": tok.vocab_size,
            "pad_token_id": tok.pad_id,
            "cls_token_id": tok.cls_id,
            "max_length": cfg.data.max_length,
        }
    fields["architecture"] = spec.pop("architecture", arch)
    if fields["architecture"] != arch:
        raise ValueError(
            f"task {cfg.data.task!r} trains a {arch!r} model, but model.architecture is "
            f"{fields['architecture']!r}; leave it out or change data.task"
        )
    if getattr(tok, "type_vocab_size", 0):  # recall: the values travel as token types
        fields["type_vocab_size"] = tok.type_vocab_size
    if data.label_names:  # the task's classes (tasks without classes have none)
        fields["num_labels"] = len(data.label_names)
        fields["label_names"] = list(data.label_names)
    names = data.label_names
    if "num_labels" in spec and names is not None and spec["num_labels"] != len(names):
        raise ValueError(
            f"model.num_labels={spec['num_labels']} but the data has {len(names)} labels {names}"
        )
    fields.update(spec)
    config = ModelConfig.from_dict(fields)
    if config.vocab_size < tok.vocab_size:
        raise ValueError(
            f"model.vocab_size={config.vocab_size} < the tokenizer's {tok.vocab_size} ids"
        )
    if config.max_length < cfg.data.max_length:
        raise ValueError(
            f"data.max_length={cfg.data.max_length} exceeds the model's max_length="
            f"{config.max_length}; lower data.max_length or raise model.max_length"
            + (" (`longseq longify` extends a trained model)" if init_from else "")
        )
    model = build_model(config, seed=cfg.run.seed)
    notes: list[str] = []
    if init_from is not None:
        notes = _load_matching(model, Path(init_from) / WEIGHTS_NAME)
    return model, notes


def _load_matching(model: nn.Module, path: Path) -> list[str]:
    """Copy the weights whose names and shapes match; a body mismatch is an error."""
    try:
        state = read_weights(path)
    except ValueError as e:
        raise ValueError(f"model.init_from: {e}") from None
    own = model.state_dict()
    bad = [
        f"{k}: saved {tuple(v.shape)} vs now {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and k.startswith("body.") and v.shape != own[k].shape
    ]
    if bad:
        raise ValueError(
            f"{path}: the saved body does not fit the configured model: " + "; ".join(bad[:4])
        )
    take = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(take, strict=False)
    tied = model.tied_keys() if hasattr(model, "tied_keys") else set()
    fresh = sorted(k for k in own if k not in take and k not in tied)
    dropped = sorted(k for k in state if k not in take)
    notes = [f"init_from {path.parent}: loaded {len(take)} tensors"]
    if fresh:
        notes.append(
            f"  newly initialised: {', '.join(fresh[:6])}{' ...' if len(fresh) > 6 else ''}"
        )
    if dropped:
        notes.append(f"  not used: {', '.join(dropped[:6])}{' ...' if len(dropped) > 6 else ''}")
    return notes


__all__ = ["TrainResult", "build_training_model", "train"]
