"""Under DDP the task is the global batch: two CPU processes over gloo.

The gathered rows equal the single-process task's rows, the head's loss on them equals the
single-process loss (query mixing included), and the gradient each rank gets for its own rows is W
times the single-process gradient, which DDP's average divides back. A 2-rank training run, where each
rank computes its own rows' share of the loss (tests/engine/test_rank_rows.py), keeps the ranks'
weights identical, logs one global loss on every rank, and only rank 0 writes the run directory.
"""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastssl.engine.distributed import Dist
from fastssl.methods.protonet import ProtoNetHead
from fastssl.task.layout import QueryMix, TaskLayout

WORLD, VIEWS, LOCAL, DIM = 2, 3, 4, 5




def _join(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)


def _full_task():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(VIEWS * WORLD * LOCAL, DIM, dtype=torch.float64, generator=g)   # view-major, global batch
    partner = torch.tensor([2, 0, 3, 1])                                             # the draw every rank made
    return z, partner


def _rows_of(rank: int) -> torch.Tensor:
    """The global rows (view v, image rank*LOCAL + i) that rank holds, in its local view-major order."""
    batch = WORLD * LOCAL
    return torch.tensor([v * batch + rank * LOCAL + i for v in range(VIEWS) for i in range(LOCAL)])


def _gather_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    z, partner = _full_task()
    local = z[_rows_of(rank)].clone().requires_grad_()
    ddp = Dist(rank, WORLD, rank)
    gathered = ddp.gather_rows(local, VIEWS)
    layout = TaskLayout(1, 2, QueryMix(partner, 0.3)).across(WORLD, LOCAL)
    loss = ProtoNetHead(0.5)(gathered, layout)
    loss.backward()
    torch.save({"gathered": gathered.detach(), "partner": layout.mix.partner, "loss": loss.detach(),
                "grad": local.grad, "rotations": ddp.gather_images(torch.arange(LOCAL) + 10 * rank)},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_task_loss_and_gradient_equal_the_single_process_ones(tmp_path, gloo_port):
    mp.spawn(_gather_worker, args=(gloo_port, str(tmp_path)), nprocs=WORLD)
    z, partner = _full_task()
    full = z.clone().requires_grad_()
    global_partner = torch.cat([partner, partner + LOCAL])
    expected = ProtoNetHead(0.5)(full, TaskLayout(1, 2, QueryMix(global_partner, 0.3)))
    (grad,) = torch.autograd.grad(expected, full)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(got["gathered"], z)
        assert torch.equal(got["partner"], global_partner)
        assert float(got["loss"]) == pytest.approx(float(expected.detach()), rel=1e-12)
        torch.testing.assert_close(got["grad"], WORLD * grad[_rows_of(rank)], rtol=1e-12, atol=1e-14)
        assert got["rotations"].tolist() == [0, 1, 2, 3, 10, 11, 12, 13]


RUN = ["data.num_train=64", "data.num_test=32", "loader.batch_size=16", "train.max_steps=3", "train.log_every=1",
       "train.device=cpu", "train.precision=fp32", "knn.k=5", "knn.every_epochs=0", "model.projector_hidden=16",
       "model.projector_out=8", "method.loss_impl=reference", "augment.impl=reference", "method.name=protonet",
       "task.rotation_p=0.5", "task.rotation_weight=0.5", "task.query_mix=mixup"]


def _train_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    torch.set_num_threads(1)
    from fastssl.config import load_config
    from fastssl.engine.trainer import Trainer

    trainer = Trainer(load_config(None, RUN), f"{out}/run")
    losses, add = [], trainer.run.add   # the global loss each step adds to the log's sums
    trainer.run.add = lambda name, value: (name == "loss" and losses.append(float(value))) or add(name, value)
    result = trainer.fit()
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    heads = {k: v.detach().clone() for part in ("method", "auxiliaries")
             for k, v in getattr(trainer, part).state_dict().items()}
    torch.save({"losses": losses, "model": state, "heads": heads, "rows": trainer._last_task[0].shape[0],
                "knn": result.knn_top1, "bank": len(trainer.knn_train.labels)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _one_process_knn(state: dict) -> float:
    """The kNN monitor's score for these weights, computed by one process over the whole splits."""
    from contextlib import nullcontext

    from fastssl.config import load_config
    from fastssl.engine.knn import knn_top1
    from fastssl.loaders.datasets import build_dataset
    from fastssl.loaders.factory import build_eval_batches
    from fastssl.models import build_model

    cfg = load_config(None, RUN)
    model = build_model(cfg.model)
    model.load_state_dict(state)
    splits = [build_dataset(cfg.data, s) for s in ("train", "test")]
    batches = [build_eval_batches(cfg.load_settings(), split, "cpu") for split in splits]
    return knn_top1(model.encoder, *batches, 10, cfg.knn.k, cfg.knn.temperature, nullcontext)


def test_two_rank_training_shares_one_task_and_one_model(tmp_path, capsys, gloo_port):
    mp.spawn(_train_worker, args=(gloo_port, str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ranks[0]["rows"] == 2 * 16                      # the head saw the global batch's 2 x 16 rows
    assert len(ranks[0]["losses"]) == 3 and ranks[0]["losses"] == ranks[1]["losses"]   # all-reduced: one loss
    for name, value in ranks[0]["model"].items():   # BN statistics too: rank 0's are shared before the kNN
        assert torch.equal(value, ranks[1]["model"][name]), name
    # the rotation classifier's gradients differ by rank (each its own rows) and are averaged
    assert ranks[0]["heads"] and all(torch.equal(v, ranks[1]["heads"][k]) for k, v in ranks[0]["heads"].items())
    # The kNN monitor: each rank embedded half of each split, and the score is the one process's.
    assert [r["bank"] for r in ranks] == [32, 32] and ranks[0]["knn"] == ranks[1]["knn"]
    assert ranks[0]["knn"] == _one_process_knn(ranks[0]["model"])
    run = tmp_path / "run"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in logged if "loss" in r] != [] and (run / "last.pt").exists()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "config.yaml", "curves.png", "env.json", "last.pt",
                                                      "metrics.jsonl"]
    # Resumed by one process: the global batch is kept, the per-process BatchNorm statistics are not, which
    # used to pass without a word.
    from fastssl.checkpoint import load_checkpoint
    from fastssl.cli import main

    assert load_checkpoint(run / "last.pt")["run"]["world"] == WORLD
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert ("resuming with a changed config: world size: 2 in the checkpoint, 1 now (the global batch "
            "loader.batch_size=16 is kept); BatchNorm statistics are per process (model.sync_bn=false)"
            ) in capsys.readouterr().err



def test_sync_bn_converts_every_batch_norm_and_refuses_the_cpu():
    from fastssl.config import ConfigError, ModelConfig
    from fastssl.engine.distributed import sync_batch_norm
    from fastssl.models import build_model

    model = build_model(ModelConfig())
    norms = [name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match="model.sync_bn=true: torch's SyncBatchNorm runs on CUDA only"):
        sync_batch_norm(model, torch.device("cpu"))
    synced = sync_batch_norm(model, torch.device("cuda"))   # conversion itself needs no GPU
    assert [n for n, m in synced.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)] == norms
    assert len(norms) > 10 and all(torch.equal(before[k], v) for k, v in synced.state_dict().items())


def _attempt_worker(rank: int, port: int, attempt: int, out: str) -> None:
    """One worker of torchrun attempt `attempt`: the agent's store at MASTER_PORT, as torchrun sets it."""
    import time

    from fastssl.engine.distributed import setup

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), TORCHELASTIC_USE_AGENT_STORE="True",
                      TORCHELASTIC_RESTART_COUNT=str(attempt))
    if attempt and rank == 1:
        time.sleep(2)   # rank 0 of the restart looks up rank 1 before rank 1 has registered again
    ddp, _ = setup(torch.device("cpu"))
    total = ddp.sum(torch.ones(()))
    torch.save({"sum": total}, f"{out}/attempt{attempt}-rank{rank}.pt")
    dist.destroy_process_group()


def test_restarted_workers_meet_in_their_own_attempt_not_at_the_dead_workers_addresses(tmp_path, gloo_port):
    """torchrun's agent keeps one store across restarts; the restarted workers used to read the dead
    workers' gloo addresses from it and fail (or hang) connecting to closed ports."""
    agent = dist.TCPStore("127.0.0.1", gloo_port, 2, is_master=True, wait_for_workers=False)
    for attempt in (0, 1):
        mp.spawn(_attempt_worker, args=(gloo_port, attempt, str(tmp_path)), nprocs=WORLD)
    sums = [float(torch.load(tmp_path / f"attempt{a}-rank{r}.pt", weights_only=True)["sum"])
            for a in (0, 1) for r in range(WORLD)]
    assert sums == [2.0] * 4
    del agent
