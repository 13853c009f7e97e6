"""The training run: data -> views -> encoder -> projector -> method's loss -> step, with checkpoints and kNN.

Nothing in the step synchronises with the host except the loss read every `log_every` steps. Resume
is exact: every random choice is a function of (seed, epoch, batch), and the checkpoint holds every
component's state (engine/state.py): model, method, auxiliary losses, optimizer, scheduler, scaler,
loader, RNG, the non-finite guard and the run's counters. The trainer names no method: the method
(fastssl/methods) and the auxiliary losses (fastssl/task) plug in through their contracts.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fastssl import compat, envinfo, methods
from fastssl import config as config_mod
from fastssl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fastssl.engine.distributed import setup as setup_distributed
from fastssl.engine.distributed import sync_batch_norm
from fastssl.engine import resumption, rundir
from fastssl.engine.knn import knn_top1
from fastssl.engine.metrics import MetricsLog, read_metrics
from fastssl.engine.nonfinite import NonFiniteGuard
from fastssl.engine.preemption import Preempted, PreemptionWatch
from fastssl.engine.plots import plot_curves
from fastssl.engine.precision import (autocast, grad_scaler, loss_operand_dtype, resolve_device, resolve_precision,
                                     view_dtype)
from fastssl.engine.state import GlobalRng, RunCounters, RunState
from fastssl.engine.tensorboard import TensorBoardSink, require as require_tensorboard
from fastssl.loaders import atomic
from fastssl.loaders.datasets import build_dataset
from fastssl.loaders.datasets.base import Shard
from fastssl.loaders.datasets.fingerprint import fingerprint
from fastssl.loaders.factory import build_eval_batches, build_train_loader
from fastssl.loaders.progress import ProgressBar
from fastssl.loaders.stages import LOADER_WAIT, StageClock
from fastssl.methods import MethodContext, build_method
from fastssl.models import build_model
from fastssl.models.backbones import check_view_sizes
from fastssl.optim import build_optimizer
from fastssl.optim.schedule import build_scheduler, retarget
from fastssl.task.builder import TaskBatch, TaskBuilder
from fastssl.task.layout import RankRows, TaskLayout
from fastssl.task.rotation_prediction import build_auxiliaries

CHECKPOINT = "last.pt"
# The stages the trainer marks in a step, in order, after the loader's own (loaders/stages.py).
STEP_STAGES = ("task", "forward", "gather", "head", "backward", "optimizer")
TRACE_STEPS = 3          # steps a profile's trace holds


@dataclass
class RunResult:
    knn_top1: float
    knn_start: float
    steps: int
    out_dir: Path
    is_main: bool = True        # rank 0 (or one process): the one that reports the result
    knn_off: str | None = None  # why no kNN score exists (knn_top1 is NaN, not a score); None: it does

    def summary(self) -> str:
        """The run's result line, as `fastssl train` prints it."""
        if self.knn_off:
            return f"knn_top1=n/a ({self.knn_off})"
        return f"knn_top1={self.knn_top1:.4f} (random init: {self.knn_start:.4f})"


@dataclass
class StepLoss:
    """One step's loss on this rank (engine/distributed.py): `backward`, what this rank backpropagates
    (world x its share); `total`, the global loss, and `terms`, each auxiliary loss's global
    (unweighted) value: detached, the same on every rank."""

    backward: torch.Tensor
    total: torch.Tensor
    terms: dict[str, torch.Tensor]


def rank_step_loss(method: nn.Module, auxiliaries: nn.ModuleList, z: torch.Tensor, layout: TaskLayout,
                   targets: torch.Tensor | None, task: TaskBatch, dist) -> StepLoss:
    """The method's and the auxiliary losses' shares for this rank's rows of the gathered task z, and
    the global values from one all-reduce of the shares (no host sync; on one process, none)."""
    rows = RankRows(dist.rank, dist.world)
    shares = [method.rank_loss(z, layout, targets, rows), *(aux.term(z, layout, task, rows) for aux in auxiliaries)]
    loss = shares[0]
    for aux, share in zip(auxiliaries, shares[1:]):
        loss = loss + aux.weight * share
    if dist.world == 1:
        return StepLoss(loss, loss.detach(), {aux.metric: t.detach() for aux, t in zip(auxiliaries, shares[1:])})
    dtype = functools.reduce(torch.promote_types, (s.dtype for s in shares))
    sums = dist.sum(torch.stack([s.detach().to(dtype) for s in shares])).unbind()
    total = sums[0]
    for aux, term in zip(auxiliaries, sums[1:]):
        total = total + aux.weight * term
    return StepLoss(loss * dist.world, total, {aux.metric: t for aux, t in zip(auxiliaries, sums[1:])})


def split_parameters(method: nn.Module, auxiliaries: nn.ModuleList) -> list[torch.Tensor]:
    """The trained parameters of the method and auxiliary losses whose losses split by rows: their gradients
    differ between ranks and are averaged (Dist.average_grads)."""
    return [p for part in (method, *auxiliaries) if getattr(part, "splits_rows", False)
            for p in part.parameters() if p.requires_grad]


def monitor_splits(cfg: config_mod.Config, train_set) -> tuple[tuple | None, str | None]:
    """The (train, test) splits the kNN monitor scores, or None and why none: the labelled ImageFolder
    knn.data names, else the run's own splits where they are labelled and share their classes."""
    if cfg.knn.data:
        labelled = dataclasses.replace(cfg.data, dataset="imagefolder", path=cfg.knn.data)
        return (build_dataset(labelled, "train"), build_dataset(labelled, "test")), None
    if not getattr(train_set, "labelled", True):
        return None, "no labelled data: set knn.data to a labelled ImageFolder to score the run"
    if getattr(train_set, "disjoint_classes", False):
        return None, "train and test classes are disjoint"
    return (train_set, build_dataset(cfg.data, "test")), None


class Trainer:
    """Owns one run directory (`out_dir`; None: a new runs/<date-time>); `fit()` trains from scratch or
    from its last checkpoint. The folder is claimed (engine/rundir.py) after the config's rules pass,
    so a rejected run leaves no folder behind, and is held until `fit` ends or `close` is called."""

    def __init__(self, cfg: config_mod.Config, out_dir: Path | None = None, resume: bool = False,
                 module: nn.Module | None = None, accept_data_change: bool = False):
        self.cfg = cfg
        self.module = module   # the user's network, for model.arch=module (fastssl.train)
        self.accept_data_change = accept_data_change   # resume on training data that differ from the checkpoint's
        methods.check(cfg, config_mod.world_size())   # the method's own rules, before anything is read
        if cfg.train.auto_resume and out_dir is None:
            raise config_mod.ConfigError("train.auto_resume=true: needs the run folder it continues (--out DIR); a "
                                         "new runs/<date-time> never holds a checkpoint")
        if cfg.log.tensorboard:
            require_tensorboard()   # a missing package fails here, not at the first log
        self.dist, self.device = setup_distributed(resolve_device(cfg.train.device))
        self.out_dir, created = self._claim(out_dir)
        self._claimed = True
        try:
            self._build(resume)
        except BaseException:
            self.close(remove_if_unused=created)
            raise

    def _claim(self, out_dir: Path | None) -> tuple[Path, bool]:
        """The run folder, locked by rank 0 (made unique when fastssl names it), and whether this call
        created it; every rank gets rank 0's folder, or its error."""
        path, created, error = None, False, None
        if self.dist.is_main:
            try:
                if out_dir is None:
                    path, created = rundir.claim(rundir.new_folder(rundir.default_path())), True
                else:
                    created = not Path(out_dir).exists()
                    path = rundir.claim(Path(out_dir))
            except rundir.RunDirError as e:
                error = str(e)
        path, error = self.dist.share((str(path) if path else None, error))
        if error is not None:
            raise rundir.RunDirError(error)
        return Path(path), created

    def close(self, remove_if_unused: bool = False) -> None:
        """Release the run folder; with `remove_if_unused`, a folder this run made and never wrote goes too."""
        if not getattr(self, "_claimed", False):
            return
        self._claimed = False
        if self.dist.is_main:
            rundir.release(self.out_dir)
            if remove_if_unused:
                rundir.remove_if_unused(self.out_dir)

    def _build(self, resume: bool) -> None:
        cfg = self.cfg
        checkpoint = self.out_dir / CHECKPOINT
        # rank 0's verdict on every rank: ranks that saw the folder differently would continue different runs
        self.resumed_by = None if resume else self.dist.share(resumption.by_itself(checkpoint, cfg.train.auto_resume))
        resume = resume or self.resumed_by is not None
        # Both checks come before any data is read: a wrong --out or a torn checkpoint fails at once.
        if resume and not checkpoint.exists():
            raise CheckpointError(f"--resume {self.out_dir}: holds no {CHECKPOINT} yet, the run stopped before its "
                                  f"first checkpoint (train.ckpt_every_epochs={cfg.train.ckpt_every_epochs}, "
                                  f"train.ckpt_every={cfg.train.ckpt_every}); start it again from its config: "
                                  f"fastssl train -c {self.out_dir / 'config.yaml'} --out {self.out_dir}")
        restored = load_checkpoint(checkpoint) if resume else None
        if not resume and checkpoint.exists():
            raise FileExistsError(f"run directory {str(self.out_dir)!r} already holds {CHECKPOINT}: continue "
                                  f"it with --resume {self.out_dir}, or choose another --out")
        # A checkpoint continues only the run it was trained as: changed fields that would alter the
        # model, the method or the data order are an error; the others are reported.
        self.config_changes = (compat.check(restored.get("config"), cfg, str(checkpoint))
                               if restored is not None else [])
        self.precision = resolve_precision(cfg.train.precision, self.device)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)          # restored from the checkpoint on resume, like torch's
        np.random.seed(cfg.train.seed)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = cfg.train.cudnn_benchmark and not cfg.train.deterministic

        train_set = build_dataset(cfg.data, "train")
        # the same data on every rank and, on a resume, the checkpoint's data (engine/resumption.py)
        self.data_fingerprint = fingerprint(train_set)
        self.config_changes += resumption.check_data(
            self.dist.gather_objects(self.data_fingerprint), restored.get("data") if restored else None,
            str(checkpoint) if restored is not None else None, self.accept_data_change, cfg.data.path)
        settings = cfg.load_settings()
        self.loader = build_train_loader(settings, train_set, self.device, self.dist.rank, self.dist.world,
                                         out_dtype=view_dtype(cfg.loader.dtype, self.precision))
        monitored, self.knn_off = monitor_splits(cfg, train_set)
        if monitored:   # under torchrun each rank embeds its shard of each split (engine/knn.py)
            self.num_classes = len(monitored[0].classes) or int(monitored[0].labels.max()) + 1
            self.knn_train, self.knn_test = (
                build_eval_batches(settings, Shard(split, self.dist.rank, self.dist.world) if self.dist.world > 1
                                   else split, self.device) for split in monitored)
        self.clock = StageClock(self.device)    # the step's stage marks: data-wait share and step time per log
        self.loader.clock = self.clock
        self.steps_per_epoch = len(self.loader)
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)

        # model.init's weights on a fresh start only: a resumed run's come from its checkpoint
        self.model = build_model(cfg.model, methods.per_view_bn(cfg), cfg.data.image_size, self.module, init=not resume
                                 ).to(self.device)
        if cfg.augment.crops is not None:
            check_view_sizes(self.model.encoder, cfg.model.arch, [group.size for group in cfg.augment.crops])
        if cfg.model.sync_bn and self.dist.world > 1:
            self.model = sync_batch_norm(self.model, self.device)
        # Under DDP the encoder's gradients are averaged over ranks (see engine/distributed.py).
        parallel = self.model if self.dist.world == 1 else DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.forward = torch.compile(parallel) if cfg.train.compile else parallel
        context = MethodContext(cfg.model.projector_out, cfg.model.projector_hidden, online=self.model,
                                operand_dtype=loss_operand_dtype(cfg.method.loss_dtype, self.precision),
                                total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                                global_views=cfg.augment.global_views(cfg.loader.views), seed=cfg.train.seed,
                                compile=cfg.train.compile)
        self.method = build_method(cfg.method, context).to(self.device)
        self.auxiliaries = build_auxiliaries(cfg.task, cfg.model.projector_out).to(self.device)
        self.tasks = TaskBuilder(cfg.task, len(train_set), cfg.train.seed, self.method.mix_blocks(self.dist.world),
                                 cfg.augment.global_views(cfg.loader.views))
        # Frozen parts (a target network) are left out: the optimizer takes what requires grad.
        self.optimizer = build_optimizer(cfg.optim, nn.ModuleList([self.model, self.method, self.auxiliaries]),
                                         cfg.loader.batch_size)
        warmup = round(cfg.optim.warmup_epochs * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, warmup, self.total_steps)
        self.scaler = grad_scaler(self.precision, self.device)

        self.run = RunCounters(self.device, world=self.dist.world)
        for name in ("loss", *(aux.metric for aux in self.auxiliaries)):   # logged from the first interval on
            self.run.sums[name] = torch.zeros((), device=self.device)
        self.guard = NonFiniteGuard(cfg.train.on_nonfinite, cfg.train.max_skipped_steps, self.device)
        self.state = RunState()
        for name, part in (("model", self.model), ("method", self.method), ("auxiliaries", self.auxiliaries),
                           ("optimizer", self.optimizer), ("scheduler", self.scheduler), ("scaler", self.scaler),
                           ("loader", self.loader), ("rng", GlobalRng()), ("guard", self.guard), ("run", self.run)):
            self.state.register(name, part)
        self.saved_step = None   # the step of the last checkpoint this run wrote or resumed from
        self._last_task = None   # the last trained step's (z, layout), for the task accuracy at a log
        if restored is not None:
            self.state.restore(restored, str(checkpoint))
            self.config_changes += self._resumed_differently(restored["run"].get("world"), warmup)
            self.saved_step = self.run.step
            self.resume_note = f"resuming from {checkpoint} at step {self.run.step}" + (
                f" ({self.resumed_by})" if self.resumed_by else "")
            self._keep_config()
            self.metrics = MetricsLog(self._metrics_path(), keep_lines=self.run.metrics_lines)
        else:
            self.resume_note = None
            self._start_run_dir()

    def _keep_config(self) -> None:
        """config.yaml holds the config the run goes on with: a resume by itself may change safe fields
        (rank 0 writes; an unchanged file is left alone, so resuming a finished run writes nothing)."""
        path, text = self.out_dir / "config.yaml", config_mod.dump_yaml(self.cfg)
        if self.dist.is_main and (not path.is_file() or path.read_text() != text):
            atomic.write_text(path, text)

    def _resumed_differently(self, saved_world: int | None, warmup: int) -> list[str]:
        """What a resume changes beyond the config's fields, put right where it can be and reported: a new
        run length recomputes the learning-rate schedule from the restored step (the checkpoint's
        schedule would end at the old length and train the extra steps at lr 0), and another world
        size gives other per-process BatchNorm statistics."""
        lines = []
        change = retarget(self.scheduler, warmup, self.total_steps)
        if change is not None:
            lines.append(f"learning-rate schedule: {change.old_total} -> {change.new_total} steps, recomputed from "
                         f"the restored step {self.run.step}: lr {change.old_lr:.4g} -> {change.new_lr:.4g}")
        self.run.world, old = self.dist.world, saved_world
        if old is not None and old != self.dist.world:
            per_process = ("" if self.cfg.model.sync_bn else "; BatchNorm statistics are per process "
                           "(model.sync_bn=false), so the run goes on differently from one on "
                           f"{old} process{'es' if old > 1 else ''}")
            lines.append(f"world size: {old} in the checkpoint, {self.dist.world} now (the global batch "
                         f"loader.batch_size={self.cfg.loader.batch_size} is kept){per_process}")
        return lines

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

    def _last_good(self) -> str:
        if self.saved_step is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is {self.out_dir / CHECKPOINT} (step {self.saved_step})"

    def save(self) -> None:
        self.guard.check(self._last_good())   # never write non-finite state over a good checkpoint
        self.guard.check_weights([self.model, self.method, self.auxiliaries], self.run.step, self._last_good())
        self.run.metrics_lines = self.metrics.lines
        if self.dist.is_main:
            data = {} if self.data_fingerprint is None else {"data": self.data_fingerprint}
            save_checkpoint(self.out_dir / CHECKPOINT, {**self.state.capture(), "config": config_mod.to_dict(self.cfg),
                                                        **data})
        self.saved_step = self.run.step

    def _preempted(self) -> None:
        """Every rank stops after the same step (engine/preemption.py): rank 0 saves (unless this step's
        checkpoint was just written), the others wait for it, and all raise Preempted."""
        if self.saved_step != self.run.step:
            self.save()
        self.dist.barrier()
        raise Preempted(f"preempted by {self.preemption.received or 'a signal to another rank'}: saved "
                        f"{self.out_dir / CHECKPOINT} at step {self.run.step}; continue with fastssl train --resume "
                        f"{self.out_dir} (or the same command with train.auto_resume=true)")

    # -- training ----------------------------------------------------------------------------------

    def _evaluate(self, epoch: int) -> float:
        self.dist.share_buffers(self.model)   # BN statistics are per rank: evaluate rank 0's model
        top1 = knn_top1(self.model.encoder, self.knn_train, self.knn_test, self.num_classes,
                        self.cfg.knn.k, self.cfg.knn.temperature, lambda: autocast(self.precision, self.device),
                        self.dist)
        self.metrics.write({"step": self.run.step, "epoch": epoch, "knn_top1": top1})
        return top1

    def train_step(self, task: TaskBatch) -> None:
        buffers = self.guard.protect([self.model, self.method, self.auxiliaries])   # skip_step: undo the forward's
        self.method.begin_step(self.run.step)
        with autocast(self.precision, self.device):
            _, z = self.forward(task.views)
            targets = self.method.targets(task)
        self.clock.mark("forward", "gather")
        # The task is the global batch: every rank's rows, gathered (a no-op on one process).
        n_views, local_batch = len(task.views), task.views[0].shape[0]
        z = self.dist.gather_rows(z, n_views)
        layout = task.layout.across(self.dist.world, local_batch)
        if targets is not None:
            targets = self.dist.gather_rows(targets, targets.shape[0] // local_batch)   # all views, or the global
        self.clock.mark("gather", "head")
        # Outside autocast: the methods choose their own precision (fp32 rows; kernels accumulate in fp32),
        # where autocast would run a reference loss's matmuls and solves in half precision. Each rank
        # computes its own rows' share of the loss; every rank guards and logs the same global loss.
        loss = rank_step_loss(self.method, self.auxiliaries, z, layout, targets, task, self.dist)
        self.clock.mark("head", "backward")
        if not self.guard.admit(loss.total, self.run.step):
            # skip_step: the batch is used up (the step and the schedule move on); the weights, the optimizer
            # and the method's state are untouched and the buffers the forward wrote are put back.
            buffers.restore()
            self.scheduler.step()
            self.run.step += 1
            self._last_task = None
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.backward).backward()
        # The heads' own parameters' gradients, where their loss was split by rows (a no-op on one process).
        self.dist.average_grads(split_parameters(self.method, self.auxiliaries))
        self.clock.mark("backward", "optimizer")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.method.after_step(self.run.step)
        self.scheduler.step()
        self.clock.mark("optimizer")
        self.run.add("loss", loss.total)
        for name, term in loss.terms.items():
            self.run.add(name, term)
        self.run.loss_count += 1
        self.run.step += 1
        self._last_task = (z.detach(), layout)   # for the task accuracy at the next log

    @torch.no_grad()
    def _task_top1(self) -> float | None:
        """The method's accuracy on the last step's task (queries vs classes), where it classifies and
        that step trained: None after a skipped step, so a resumed run logs what a straight one does."""
        if self._last_task is None:
            return None
        logits = self.method.logits(*self._last_task)
        return None if logits is None else float(logits.top1())

    def _log(self, epoch: int, progress: ProgressBar, images: int, seconds: float) -> None:
        self.guard.check(self._last_good())   # the interval's host sync reads the guard's flag too
        # loss_count is 0 when skip_step dropped every step of the interval: no mean, logged as null
        count = self.run.loss_count
        means = {name: float(total) / count if count else float("nan") for name, total in self.run.sums.items()}
        loss = means.pop("loss", float("nan"))
        lr = self.optimizer.param_groups[0]["lr"]
        record = {"step": self.run.step, "epoch": epoch, "loss": loss, "lr": lr, "images_per_s": images / seconds}
        steps = self.clock.take()        # the interval's stage marks (read now: the log syncs anyway)
        if steps:
            total = sum(step["step"] for step in steps)
            record["step_ms"] = float(np.median([step["step"] for step in steps]))
            record["data_wait_share"] = sum(step.get(LOADER_WAIT, 0.0) for step in steps) / total if total else 0.0
        top1 = self._task_top1()
        if top1 is not None:
            record["task_top1"] = top1
        record.update(means)   # each auxiliary loss alone (unweighted), also inside `loss`
        if self.guard.skipped:
            record["skipped_steps"] = self.guard.skipped
        self.metrics.write(record)
        progress.update(self.run.step, f"epoch {epoch + 1}/{self.cfg.train.epochs} loss {loss:.4f} lr {lr:.4g} "
                                       f"{record['images_per_s']:,.0f} img/s")
        for total in self.run.sums.values():
            total.zero_()
        self.run.loss_count = 0

    def _batches(self):
        """The loader's batches of this epoch; each step's clock starts before its batch is asked for."""
        batches = iter(self.loader)
        while True:
            self.clock.start(LOADER_WAIT)
            try:
                batch = next(batches)
            except StopIteration:
                self.clock.discard()
                return
            self.clock.mark(LOADER_WAIT, "task")
            yield batch

    def _step(self, batch, epoch: int) -> None:
        """One training step on a loaded batch: the task, then train_step; `fit` and `profile_steps` share it."""
        task = self.tasks.build(batch.views, batch.index, epoch, self.run.step)
        self.clock.mark("task", "forward")
        self.train_step(task)
        self.clock.stop()

    def profile_steps(self, warmup: int, steps: int, sync: bool = False, trace: Path | None = None
                      ) -> tuple[list[dict[str, float]], float, dict[str, float]]:
        """`warmup` untimed steps, then `steps` timed ones (and TRACE_STEPS under torch.profiler into `trace`),
        through the training step `fit` runs: (per-step stage ms, the timed steps' wall seconds, per-stage
        peak MiB on CUDA). Nothing is evaluated or saved; the run must be long enough (train.max_steps)."""
        self.clock = StageClock(self.device, sync=sync, memory=True)
        self.loader.clock = self.clock

        def run(count: int) -> None:
            epoch = self.run.step // self.steps_per_epoch
            while count > 0:
                self.loader.set_epoch(epoch)
                for batch in self._batches():
                    self._step(batch, epoch)
                    count -= 1
                    if count == 0:
                        return
                epoch += 1

        def settle() -> None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        run(warmup)
        settle()
        self.clock.take()
        self.clock.peak_mib.clear()
        tick = time.perf_counter()
        run(steps)
        settle()
        wall = time.perf_counter() - tick
        timings, peaks = self.clock.take(), dict(self.clock.peak_mib)
        if trace is not None:
            self.clock = StageClock(self.device, annotate=True)
            self.loader.clock = self.clock
            activities = [torch.profiler.ProfilerActivity.CPU] + (
                [torch.profiler.ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            with torch.profiler.profile(activities=activities) as prof:
                run(TRACE_STEPS)
                settle()
            with atomic.atomic_path(trace) as tmp:
                prof.export_chrome_trace(str(tmp))
        return timings, wall, peaks

    def fit(self) -> RunResult:
        """Train to the end; Preempted (after a checkpoint) when SIGTERM or SIGUSR1 asks the run to stop."""
        try:
            with PreemptionWatch(self.dist.world, self.device) as self.preemption:
                return self._fit()
        finally:
            self.metrics.close()   # detaches TensorBoard's sink, also when the run stops on an error
            self.close()

    def _fit(self) -> RunResult:
        with ProgressBar("train", self.total_steps, unit="steps", initial=self.run.step, every_s=0,
                         enabled=self.dist.is_main) as progress:
            if self.resume_note:
                progress.message(self.resume_note)
            for change in self.config_changes:
                progress.message(f"resuming with a changed config: {change}")
            if self.run.finished and self.run.step >= self.total_steps:
                return self._finished()
            if self.cfg.log.tensorboard and self.dist.is_main:
                self.metrics.attach(TensorBoardSink(self.out_dir, start_step=self.run.step))
            if self.run.step == 0 and self.metrics.lines == 0 and not self.knn_off:
                self.run.knn_start = self._evaluate(epoch=0)
                progress.message(f"knn_top1 at random init: {self.run.knn_start:.4f}")
            epoch = self._train(progress)
        final = float("nan") if self.knn_off else self._evaluate(epoch)
        self.run.finished = True
        self.save()
        if self.dist.is_main:
            plot_curves(read_metrics(self.metrics.path), self.out_dir / "curves.png")
        return self._result(final)

    def _train(self, progress: ProgressBar) -> int:
        """The steps left of the run; the epoch it ends in."""
        cfg = self.cfg.train
        per_batch = self.cfg.loader.batch_size
        every = 0 if self.knn_off else self.cfg.knn.every_epochs
        epoch = self.run.step // self.steps_per_epoch
        while self.run.step < self.total_steps:
            self.loader.set_epoch(epoch)  # keeps a restored loader's position within `epoch`
            tick, images = time.perf_counter(), 0
            for batch in self._batches():
                self._step(batch, epoch)
                images += per_batch
                if self.run.step % cfg.log_every == 0 or self.run.step == self.total_steps:
                    self._log(epoch, progress, images, time.perf_counter() - tick)
                    tick, images = time.perf_counter(), 0
                epoch_end = self.run.step % self.steps_per_epoch == 0
                if epoch_end:
                    # Epoch-end work comes before this step's checkpoint: a run resumed from it starts
                    # the next epoch and must not have skipped the evaluation.
                    epoch += 1
                    if every and epoch % every == 0 and self.run.step < self.total_steps:
                        progress.message(f"knn_top1 after epoch {epoch}: {self._evaluate(epoch):.4f}")
                if ((cfg.ckpt_every and self.run.step % cfg.ckpt_every == 0)
                        or (epoch_end and cfg.ckpt_every_epochs and epoch % cfg.ckpt_every_epochs == 0)):
                    self.save()
                if self.run.step >= self.total_steps:
                    break
                if self.preemption.stop():   # every rank votes after every step but the last
                    self._preempted()
        return epoch

    def _result(self, final: float) -> RunResult:
        return RunResult(knn_top1=final, knn_start=self.run.knn_start, steps=self.run.step, out_dir=self.out_dir,
                         is_main=self.dist.is_main, knn_off=self.knn_off)

    def _finished(self) -> RunResult:
        """A resumed run that had already ended: its result, from its metrics (rank 0's); nothing is written
        but a missing curves.png."""
        if not self.dist.is_main:
            return self._result(float("nan"))
        records = read_metrics(self.out_dir / "metrics.jsonl")[:self.metrics.lines]
        if not (self.out_dir / "curves.png").exists():   # lost or deleted: drawn again from the metrics
            plot_curves(records, self.out_dir / "curves.png")
        final = [r["knn_top1"] for r in records if "knn_top1" in r and r["step"] == self.run.step]
        return self._result(final[-1] if final else float("nan"))
