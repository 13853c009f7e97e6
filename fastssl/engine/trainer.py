"""The training run: data -> views -> encoder -> projector -> head -> step, with checkpoints and kNN.

Nothing in the step synchronises with the host except the loss read every `log_every` steps. Resume
is exact: every random choice is a function of (seed, epoch, batch), and the checkpoint holds the
model, optimizer, scheduler, scaler, RNG and loader state plus the running loss sum of the interval.
"""
from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fastssl import compat, envinfo
from fastssl import config as config_mod
from fastssl.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from fastssl.engine.distributed import setup as setup_distributed
from fastssl.engine.knn import knn_top1
from fastssl.engine.metrics import MetricsLog, Progress, read_metrics
from fastssl.engine.nonfinite import NonFiniteGuard
from fastssl.engine.plots import plot_curves
from fastssl.engine.precision import (autocast, grad_scaler, loss_operand_dtype, resolve_device, resolve_precision,
                                     view_dtype)
from fastssl.task.builder import TaskBatch, TaskBuilder
from fastssl.heads import build_head
from fastssl.heads.byol import ema_update_, make_target, momentum_at
from fastssl.heads.rotation import RotationPredictor
from fastssl.loaders import atomic
from fastssl.loaders.datasets import build_dataset
from fastssl.loaders.factory import build_eval_batches, build_train_loader
from fastssl.models import build_model
from fastssl.optim import build_optimizer
from fastssl.optim.schedule import build_scheduler

CHECKPOINT = "last.pt"
# "target": BYOL's EMA target network (None for the other heads); "rotation": the rotation predictor
# (None without rotation prediction); "aux_sum": its loss summed over the log interval.
REQUIRED_STATE = ("step", "model", "head", "target", "rotation", "optimizer", "scheduler", "scaler", "rng",
                  "loader", "knn_start", "loss_sum", "aux_sum", "loss_count", "metrics_lines")


@dataclass
class RunResult:
    knn_top1: float
    knn_start: float
    steps: int
    out_dir: Path
    is_main: bool = True        # rank 0 (or one process): the one that reports the result
    knn_meaningful: bool = True  # False where the splits share no class: knn_top1 is NaN, not a score


class Trainer:
    """Owns one run directory; `fit()` trains from scratch or from its last checkpoint."""

    def __init__(self, cfg: config_mod.Config, out_dir: Path, resume: bool = False):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        # Both checks come before any data is read: a wrong --out or a torn checkpoint fails at once.
        restored = load_checkpoint(self.out_dir / CHECKPOINT, REQUIRED_STATE) if resume else None
        if not resume and (self.out_dir / CHECKPOINT).exists():
            raise FileExistsError(f"run directory {str(self.out_dir)!r} already holds {CHECKPOINT}: continue "
                                  f"it with --resume {self.out_dir}, or choose another --out")
        # A checkpoint continues only the run it was trained as: changed fields that would alter the
        # model, the method or the data order are an error; the others are reported.
        self.config_changes = (compat.check(restored.get("config"), cfg, str(self.out_dir / CHECKPOINT))
                               if restored is not None else [])
        self.dist, self.device = setup_distributed(resolve_device(cfg.train.device))
        self.precision = resolve_precision(cfg.train.precision, self.device)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)          # restored from the checkpoint on resume, like torch's
        np.random.seed(cfg.train.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark and not cfg.train.deterministic

        train_set, test_set = build_dataset(cfg.data, "train"), build_dataset(cfg.data, "test")
        self.num_classes = len(train_set.classes) or int(train_set.labels.max()) + 1
        self.loader = build_train_loader(cfg.load_settings(), train_set, self.device, self.dist.rank, self.dist.world,
                                         out_dtype=view_dtype(cfg.loader.dtype, self.precision))
        self.tasks = TaskBuilder(cfg.method, len(train_set), cfg.train.seed, self.dist.world)
        # A dataset whose splits share no class (`disjoint_classes`) has no kNN score: none is computed.
        self.knn_meaningful = not getattr(train_set, "disjoint_classes", False)
        if self.knn_meaningful:
            self.knn_train = build_eval_batches(cfg.load_settings(), train_set, self.device)
            self.knn_test = build_eval_batches(cfg.load_settings(), test_set, self.device)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)

        self.model = build_model(cfg.model).to(self.device)
        # Under DDP the encoder's gradients are averaged over ranks (see engine/distributed.py).
        parallel = self.model if self.dist.world == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(parallel) if cfg.train.compile else parallel
        # r2d2 learns a scale, a bias and lambda; byol's head is its predictor MLP
        self.head = build_head(cfg.method, cfg.model.projector_out,
                               loss_operand_dtype(cfg.method.loss_dtype, self.precision)).to(self.device)
        # BYOL's target network: an EMA of encoder + projector, outside the optimizer (no gradient).
        self.target = make_target(self.model) if cfg.method.head == "byol" else None
        if self.target is not None:
            self.target_forward = torch.compile(self.target) if cfg.train.compile else self.target
            self._ema_params = (list(self.target.parameters()), list(self.model.parameters()))
        self.rotation = (RotationPredictor(cfg.model.projector_out).to(self.device)
                         if cfg.method.rotation_weight > 0 else None)
        trained = [self.model, self.head] + ([self.rotation] if self.rotation is not None else [])
        self.optimizer = build_optimizer(cfg.optim, nn.ModuleList(trained))
        warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, warmup, self.total_steps)
        self.scaler = grad_scaler(self.precision, self.device)

        self.step, self.knn_start = 0, float("nan")
        self.loss_sum = torch.zeros((), device=self.device)
        self.aux_sum = torch.zeros((), device=self.device)
        self.loss_count = 0
        self.guard = NonFiniteGuard(cfg.train.on_nonfinite, cfg.train.max_skipped_steps, self.device)
        self.saved_step = None   # the step of the last checkpoint this run wrote or resumed from
        self.finished = False    # the final evaluation is logged: the checkpoint is the run's end
        if restored is not None:
            self._restore(restored)
        else:
            self._start_run_dir()

    # -- run directory and checkpoints -------------------------------------------------------------

    def _start_run_dir(self) -> None:
        """Rank 0 owns the run directory; under DDP the other ranks write nothing."""
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.out_dir / "config.yaml", config_mod.dump_yaml(self.cfg))
            atomic.write_text(self.out_dir / "env.json", json.dumps(envinfo.collect(), indent=2) + "\n")
        self.metrics = MetricsLog(self._metrics_path(), keep_lines=0)

    def _metrics_path(self) -> Path | None:
        return self.out_dir / "metrics.jsonl" if self.dist.is_main else None

    def _state(self) -> dict:
        return {"step": self.step, "model": self.model.state_dict(), "head": self.head.state_dict(),
                "target": None if self.target is None else self.target.state_dict(),
                "rotation": None if self.rotation is None else self.rotation.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": capture_rng(), "loader": self.loader.state_dict(), "knn_start": self.knn_start,
                "loss_sum": self.loss_sum.detach().cpu(), "aux_sum": self.aux_sum.detach().cpu(),
                "loss_count": self.loss_count, "skipped_steps": self.guard.skipped, "finished": self.finished,
                "metrics_lines": self.metrics.lines, "config": config_mod.to_dict(self.cfg)}

    def _last_good(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {self.out_dir / CHECKPOINT} (step {self.saved_step})"

    def save(self) -> None:
        self.guard.check(self._last_good())   # never write non-finite state over a good checkpoint
        self.guard.check_weights([m for m in (self.model, self.head, self.target, self.rotation) if m is not None],
                                 self.step, self._last_good())
        if self.dist.is_main:
            save_checkpoint(self.out_dir / CHECKPOINT, self._state())
        self.saved_step = self.step

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.head.load_state_dict(state["head"])
        if self.target is not None:
            self.target.load_state_dict(state["target"])
        if self.rotation is not None:
            self.rotation.load_state_dict(state["rotation"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.loader.load_state_dict(state["loader"])
        restore_rng(state["rng"])
        self.step, self.knn_start = state["step"], state["knn_start"]
        self.loss_sum = state["loss_sum"].to(self.device)
        self.aux_sum = state["aux_sum"].to(self.device)
        self.loss_count = state["loss_count"]
        self.guard.skipped = state.get("skipped_steps", 0)
        self.finished = state.get("finished", False)
        self.saved_step = self.step
        self.metrics = MetricsLog(self._metrics_path(), keep_lines=state["metrics_lines"])

    # -- training ----------------------------------------------------------------------------------

    def _evaluate(self, epoch: int) -> float:
        top1 = knn_top1(self.model.encoder, self.knn_train, self.knn_test, self.num_classes,
                        self.cfg.knn.k, self.cfg.knn.temperature, lambda: autocast(self.precision, self.device))
        self.metrics.write({"step": self.step, "epoch": epoch, "knn_top1": top1})
        return top1

    def train_step(self, task: TaskBatch) -> None:
        images = torch.cat(task.views).contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device):
            _, z = self.forward(images)
            if self.target is not None:   # BYOL's target sees the views before query mixing
                clean = images if task.clean_views is task.views else torch.cat(task.clean_views)
                with torch.no_grad():
                    _, target_z = self.target_forward(clean.contiguous(memory_format=torch.channels_last))
        # The task is the global batch: every rank's rows, gathered (a no-op on one process).
        n_views, local_batch = len(task.views), task.views[0].shape[0]
        z = self.dist.gather_rows(z, n_views)
        layout = task.layout.across(self.dist.world, local_batch)
        # Outside autocast: the heads choose their own precision (fp32 rows; kernels accumulate in fp32),
        # where autocast would run a reference head's matmuls and solves in half precision.
        if self.target is None:
            loss = self.head(z, layout)
        else:
            loss = self.head(z, layout, self.dist.gather_rows(target_z, n_views))
        if self.rotation is not None:
            aux = self.rotation(z, layout, self.dist.gather_images(task.rotations))
            loss = loss + self.cfg.method.rotation_weight * aux
        if not self.guard.admit(loss, self.step):   # skip_step: the batch is used up, the model untouched
            self.scheduler.step()
            self.step += 1
            return
        if self.rotation is not None:
            self.aux_sum += aux.detach()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.target is not None:  # after the step, on the device; tau is a host float of the step
            ema_update_(*self._ema_params, momentum_at(self.step, self.total_steps, self.cfg.method.byol_momentum))
        self.scheduler.step()
        self.loss_sum += loss.detach()
        self.loss_count += 1
        self.step += 1
        self._last_task = (z.detach(), layout)   # for the task accuracy at the next log

    @torch.no_grad()
    def _task_top1(self) -> float | None:
        """The head's accuracy on the last batch's task (queries vs classes), for heads that classify."""
        logits = getattr(self.head, "logits", None)
        return None if logits is None else float(logits(*self._last_task).top1())

    def _log(self, epoch: int, progress: Progress, images: int, seconds: float) -> None:
        self.guard.check(self._last_good())   # the interval's host sync reads the guard's flag too
        # loss_count is 0 when skip_step dropped every step of the interval: no mean, logged as null
        mean = lambda total: float(total) / self.loss_count if self.loss_count else float("nan")  # noqa: E731
        loss = mean(self.loss_sum)
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"step": self.step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_s": images / seconds}
        top1 = self._task_top1() if self.loss_count else None
        if top1 is not None:
            record["task_top1"] = top1
        if self.rotation is not None:   # the rotation-prediction term alone (unweighted), also in `loss`
            record["rotation_loss"] = mean(self.aux_sum)
            self.aux_sum.zero_()
        if self.guard.skipped:
            record["skipped_steps"] = self.guard.skipped
        self.metrics.write(record)
        progress.update(self.step, epoch, self.cfg.train.epochs, loss, lr, record["images_per_s"])
        self.loss_sum.zero_()
        self.loss_count = 0

    def fit(self) -> RunResult:
        cfg = self.cfg.train
        progress = Progress(self.total_steps, self.step, stream=sys.stderr if self.dist.is_main else None)
        for change in self.config_changes:
            progress.message(f"resuming with a changed config: {change}")
        if self.finished and self.step >= self.total_steps:
            return self._finished()
        if self.step == 0 and self.metrics.lines == 0 and self.knn_meaningful:
            self.knn_start = self._evaluate(epoch=0)
            progress.message(f"knn_top1 at random init: {self.knn_start:.4f}")
        per_batch = self.cfg.loader.batch_size
        every = self.cfg.knn.every_epochs if self.knn_meaningful else 0
        epoch = self.step // self.steps_per_epoch
        while self.step < self.total_steps:
            self.loader.set_epoch(epoch)  # keeps a restored loader's position within `epoch`
            tick, images = time.perf_counter(), 0
            for batch in self.loader:
                self.train_step(self.tasks.build(batch.views, batch.index, epoch, self.step))
                images += per_batch
                if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                    self._log(epoch, progress, images, time.perf_counter() - tick)
                    tick, images = time.perf_counter(), 0
                if self.step % self.steps_per_epoch == 0:
                    # Epoch-end work comes before this step's checkpoint: a run resumed from it starts
                    # the next epoch and must not have skipped the evaluation.
                    epoch += 1
                    if every and epoch % every == 0 and self.step < self.total_steps:
                        progress.message(f"knn_top1 after epoch {epoch}: {self._evaluate(epoch):.4f}")
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save()
                if self.step >= self.total_steps:
                    break
        final = self._evaluate(epoch) if self.knn_meaningful else float("nan")
        self.finished = True
        self.save()
        if self.dist.is_main:
            plot_curves(read_metrics(self.metrics.path), self.out_dir / "curves.png")
        return self._result(final)

    def _result(self, final: float) -> RunResult:
        return RunResult(knn_top1=final, knn_start=self.knn_start, steps=self.step, out_dir=self.out_dir,
                         is_main=self.dist.is_main, knn_meaningful=self.knn_meaningful)

    def _finished(self) -> RunResult:
        """A resumed run that had already ended: its result, from its metrics (rank 0's); nothing is written."""
        if not self.dist.is_main:
            return self._result(float("nan"))
        records = read_metrics(self.out_dir / "metrics.jsonl")[:self.metrics.lines]
        final = [r["knn_top1"] for r in records if "knn_top1" in r and r["step"] == self.step]
        return self._result(final[-1] if final else float("nan"))
