"""MoCo v2 (method.name=moco): the loss against float64 loops (queue negatives only, query mixing), the
queue as a ring buffer (FIFO, wrap-around, pointer, state dict, one enqueue per finished step, equal on
two gloo ranks), the key encoder's EMA, shuffling BN against a per-chunk forward, the config rules and
files, and exact resume."""
import copy
import re
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastssl import methods
from fastssl.checkpoint import load_checkpoint
from fastssl.config import ConfigError, load_config
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer
from fastssl.methods import MethodContext, build_method, moco
from fastssl.methods.moco import MoCoHead, moco_loss, shuffle_order
from fastssl.models import build_model
from fastssl.task.builder import TaskBatch
from fastssl.task.layout import QueryMix, RankRows, TaskLayout

ROOT = Path(__file__).resolve().parents[1]
# 128 images, batch 16, 2 views: 32 keys per step into a queue of 48, so the second step wraps around.
RUN = ["method.name=moco", "method.moco.queue_size=48", "method.moco.momentum=0.9", "method.loss_impl=reference",
       "data.num_train=128", "data.num_test=32", "loader.batch_size=16", "train.epochs=1", "train.log_every=1",
       "train.deterministic=true", "train.precision=fp32", "train.device=cpu", "knn.k=5", "knn.every_epochs=0",
       "model.width=0.125", "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference"]


def _explicit_loss(q, k, queue, n_views: int, temperature: float, n_supp: int = 1, mix: QueryMix | None = None):
    """Mean over images i and ordered view pairs v != w of -log softmax over [q.k+, q.queue_j] / T at the
    positive, q = q_v(i), k+ = k_w(i), by loops in float64; a mixed query (v >= n_supp) of image i is
    lam L(i) + (1 - lam) L(partner[i])."""
    q, k, queue = q.detach().double(), k.detach().double(), queue.detach().double()
    batch = q.shape[0] // n_views
    total, count = 0.0, 0
    for i in range(batch):
        for v in range(n_views):
            weights = [(i, 1.0)]
            if mix is not None and v >= n_supp:
                weights = [(i, mix.lam), (int(mix.partner[i]), 1 - mix.lam)]
            query = q[v * batch + i] / q[v * batch + i].norm()
            for w in range(n_views):
                if v == w:
                    continue
                for image, weight in weights:
                    key = k[w * batch + image] / k[w * batch + image].norm()
                    logits = [float(query @ key) / temperature]
                    logits += [float(query @ queue[j]) / temperature for j in range(queue.shape[0])]
                    top = max(logits)
                    lse = top + math.log(sum(math.exp(x - top) for x in logits))
                    total += weight * (lse - logits[0])
                count += 1
    return total / count


def _head(dim: int, queue_size: int, **sets) -> MoCoHead:
    extra = [f"method.moco.{k}={v}" for k, v in sets.items()]
    cfg = load_config(None, ["method.name=moco", f"method.moco.queue_size={queue_size}", "loader.batch_size=2",
                             "method.moco.shuffle_bn_splits=1", *extra])
    methods.check(cfg)
    head = build_method(cfg.method, MethodContext(dim))
    assert isinstance(head, MoCoHead)
    return head


def _unit(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("n_views", [2, 3])
@pytest.mark.parametrize("mixed", [False, True])
def test_loss_equals_explicit_float64_loops(n_views, mixed):
    g = torch.Generator().manual_seed(10 * n_views + mixed)
    batch, dim, temperature = 5, 7, 0.3
    q = torch.randn(n_views * batch, dim, generator=g, dtype=torch.float64)
    k = torch.randn(n_views * batch, dim, generator=g, dtype=torch.float64)
    queue = _unit(11, dim, g)
    mix = QueryMix(torch.randperm(batch, generator=g), 0.3) if mixed else None
    layout = TaskLayout(1, n_views - 1, mix)
    expected = _explicit_loss(q, k, queue, n_views, temperature, 1, mix)
    assert float(moco_loss(q, k, queue, layout, temperature)) == pytest.approx(expected, rel=1e-12)
    # fp32 on the torch reference and on the fused kernel (Triton's interpreter here), gradients alike.
    grads = {}
    for impl in ("reference", "triton"):
        q32 = q.float().requires_grad_()
        loss = moco_loss(q32, k.float(), queue.float(), layout, temperature, impl=impl)
        assert loss.dtype == torch.float32
        assert float(loss.detach()) == pytest.approx(expected, rel=2e-6)
        (grads[impl],) = torch.autograd.grad(loss, q32)
    q64 = q.clone().requires_grad_()
    (grad64,) = torch.autograd.grad(moco_loss(q64, k, queue, layout, temperature), q64)
    for impl, grad in grads.items():
        torch.testing.assert_close(grad.double(), grad64, rtol=1e-4, atol=1e-6, msg=impl)


def test_only_the_queue_is_negative_not_the_batchs_other_keys():
    """MoCo v2's form: moving another image's key leaves a query's loss unchanged; moving the queue does not."""
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(8, 4, generator=g, dtype=torch.float64) for _ in range(2))
    queue = _unit(6, 4, g)
    layout = TaskLayout(1, 1)
    base = float(moco_loss(q, k, queue, layout, 0.2))
    q.requires_grad_()
    other = k.clone()
    other[[2, 6]] = -other[[2, 6]] * 3                   # image 2's keys (both views)
    per_row = []
    for keys in (k, other):
        loss = moco_loss(q, keys, queue, layout, 0.2)
        (grad,) = torch.autograd.grad(loss, q)
        per_row.append(grad)
    # Only image 2's own queries (rows 2 and 6) see image 2's keys.
    keep = [r for r in range(8) if r not in (2, 6)]
    torch.testing.assert_close(per_row[0][keep], per_row[1][keep], rtol=0, atol=1e-15)
    assert float(moco_loss(q.detach(), k, -queue, layout, 0.2)) != pytest.approx(base)


def test_head_uses_its_queue_keeps_it_in_forward_and_logits_and_sends_no_gradient_to_the_keys():
    g = torch.Generator().manual_seed(3)
    n_views, batch, dim = 3, 4, 6
    head = _head(dim, 20, temperature=0.25)
    head.enqueue(_unit(5, dim, g).float())              # a queue already holding entries (and random rows)
    queue, ptr = head.queue.clone(), head.queue_ptr.clone()
    z = torch.randn(n_views * batch, dim, generator=g, requires_grad=True)
    t = torch.randn(n_views * batch, dim, generator=g, requires_grad=True)
    layout = TaskLayout(1, n_views - 1)
    loss = head(z, layout, t)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(_explicit_loss(z, t, queue, n_views, 0.25), rel=1e-5)
    assert t.grad is None and z.grad is not None and z.grad.abs().sum() > 0
    assert head.logits(z.detach(), layout) is None               # no finished step yet: no keys to score
    assert torch.equal(head.queue, queue) and torch.equal(head.queue_ptr, ptr)   # forward does not enqueue

    head.after_step(0)
    keys = F.normalize(t.detach(), dim=1)
    torch.testing.assert_close(head.queue[5:17], keys, rtol=0, atol=1e-7)
    assert int(head.queue_ptr) == 17 and torch.equal(head.queue[:5], queue[:5])
    logits = head.logits(z.detach(), layout)                     # queries vs the keys, own view excluded
    assert logits.logits.shape == (12, 12) and torch.isinf(logits.logits.diagonal()).all()
    head.after_step(1)                                            # no new forward: nothing enqueued twice
    assert int(head.queue_ptr) == 17
    snapshot = head.queue.clone()
    head.logits(z.detach(), layout)
    assert torch.equal(head.queue, snapshot)


def test_queue_is_a_ring_buffer_fifo_with_wrap_around_and_survives_the_state_dict():
    head = _head(2, 5)
    rows = torch.arange(12, dtype=torch.float32).view(6, 2)      # six recognisable keys a..f
    head.enqueue(rows[:3])
    assert int(head.queue_ptr) == 3 and torch.equal(head.queue[:3], rows[:3])
    head.enqueue(rows[3:])                                        # d, e into slots 3, 4; f wraps to slot 0
    assert int(head.queue_ptr) == 1
    assert torch.equal(head.queue, rows[[5, 1, 2, 3, 4]])
    head.enqueue(rows[:5])                                        # a whole queue's worth from slot 1 on
    assert int(head.queue_ptr) == 1 and torch.equal(head.queue, rows[[4, 0, 1, 2, 3]])
    with pytest.raises(ValueError, match="do not fit"):
        head.enqueue(torch.zeros(6, 2))

    state = head.state_dict()
    assert set(state) == {"queue", "queue_ptr"}                  # no key encoder without an online network
    fresh = _head(2, 5)
    assert not torch.equal(fresh.queue, head.queue)              # random unit rows to start with
    assert torch.allclose(fresh.queue.norm(dim=1), torch.ones(5))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, head.queue) and torch.equal(fresh.queue_ptr, head.queue_ptr)
    for h in (head, fresh):
        h.enqueue(rows[:2])
    assert torch.equal(fresh.queue, head.queue) and int(fresh.queue_ptr) == 3


def test_a_skipped_step_enqueues_nothing():
    """The non-finite guard skips after_step: the next step's keys replace the unused ones."""
    g = torch.Generator().manual_seed(5)
    head, layout = _head(3, 8), TaskLayout(1, 1)
    z, first, second = (torch.randn(4, 3, generator=g) for _ in range(3))
    head(z, layout, first)
    head(z, layout, second)
    start = int(head.queue_ptr)
    head.after_step(1)
    torch.testing.assert_close(head.queue[start:start + 4], F.normalize(second, dim=1), rtol=0, atol=1e-7)
    assert int(head.queue_ptr) == start + 4


def _key_setup(per_view_bn: bool, splits: int, n_views: int = 2, batch: int = 8):
    """A width-1/8 ResNet-18 (16 px) as the online network, a head with its key encoder, a task."""
    cfg = load_config(None, ["model.width=0.125", "model.projector_hidden=32", "model.projector_out=16"])
    torch.manual_seed(0)
    online = build_model(cfg.model, per_view_bn, image_size=16)
    head = MoCoHead(16, 64, online=online, impl="reference", shuffle_bn_splits=splits, seed=7)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(batch, 3, 16, 16, generator=g) for _ in range(n_views)]
    return online, head, TaskBatch(views, views, TaskLayout(1, n_views - 1), None)


def _split_bn_reference(key_encoder, views, order, splits: int, per_view_bn: bool):
    """Keys by hand: a copy of the key encoder (train mode) run on each chunk of the permuted images, per
    view (per_view_bn) or on the chunk of every view at once (channels-last, the network's layout), each
    key written to its image's row."""
    net, size = copy.deepcopy(key_encoder), len(order) // splits

    def forward(x):
        return net.projector(net.encoder(x.contiguous(memory_format=torch.channels_last)))

    keys = [[None] * len(order) for _ in views]
    groups = [[v] for v in range(len(views))] if per_view_bn else [list(range(len(views)))]
    for c in range(splits):
        images = order[c * size:(c + 1) * size].tolist()
        for group in groups:
            rows = forward(torch.cat([views[v][images] for v in group]))
            for j, row in enumerate(rows):
                keys[group[j // size]][images[j % size]] = row
    return torch.stack([row for view in keys for row in view]), net


@pytest.mark.parametrize("per_view_bn, n_views", [(True, 2), (False, 2), (True, 3)])
def test_shuffled_split_bn_keys_equal_a_per_chunk_forward_of_the_permuted_batch(per_view_bn, n_views):
    online, head, task = _key_setup(per_view_bn, splits=4, n_views=n_views)
    queries = {name: t.clone() for name, t in online.state_dict().items()}
    start = copy.deepcopy(head.key_encoder)
    head.begin_step(5)
    with torch.no_grad():
        keys = head.targets(task)
        expected, reference = _split_bn_reference(start, task.clean_views, shuffle_order(7, 5, 8), 4, per_view_bn)
        whole = start(task.clean_views)[1]
    assert torch.equal(keys, expected)
    assert (keys - whole).abs().max() > 1e-3   # the chunks' statistics are not the whole batch's
    # BN running statistics: each chunk's forward moved them, in the same order as by hand.
    for (name, a), b in zip(head.key_encoder.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name
    # The query (online) network is not touched by the key encoder's shuffle.
    for name, t in online.state_dict().items():
        assert torch.equal(t, queries[name]), name


def test_one_split_is_the_plain_forward():
    _, head, task = _key_setup(True, splits=1)
    plain = copy.deepcopy(head.key_encoder)
    head.begin_step(5)
    with torch.no_grad():
        assert torch.equal(head.targets(task), plain(task.clean_views)[1])


def test_the_shuffle_is_a_function_of_seed_and_step_alone():
    order = shuffle_order(7, 5, 16)
    assert sorted(order.tolist()) == list(range(16))
    assert torch.equal(order, shuffle_order(7, 5, 16))
    assert not torch.equal(order, shuffle_order(7, 6, 16)) and not torch.equal(order, shuffle_order(8, 5, 16))
    # A head restored from a checkpoint (a fresh one given the state) shuffles step 5 as the first one did,
    # whatever steps it ran before.
    _, head, task = _key_setup(True, splits=4)
    _, resumed, _ = _key_setup(True, splits=4)
    with torch.no_grad():
        for step in (0, 1):
            head.begin_step(step)
            head.targets(task)
        resumed.load_state_dict(head.state_dict())
        head.begin_step(5)
        resumed.begin_step(5)
        assert torch.equal(head.targets(task), resumed.targets(task))


def test_training_shuffles_by_the_trainers_step_and_leaves_the_query_encoder_alone(tmp_path, monkeypatch):
    """The default 8 splits in training: the shuffle is drawn at the trainer's step, the online network's BN
    statistics are those of its own forward (a copy run on the same views), the keys are not the plain
    forward's."""
    draws = []
    monkeypatch.setattr(moco, "shuffle_order", lambda seed, step, batch: draws.append((seed, step)) or
                        shuffle_order(seed, step, batch))
    trainer = Trainer(load_config(None, RUN + ["train.max_steps=2", "train.seed=3"]), tmp_path)
    assert trainer.method.splits == 8
    batches = iter(trainer.loader)
    for step in range(2):
        batch = next(batches)
        task = trainer.tasks.build(batch.views, batch.index, 0, step)
        online, key_encoder = copy.deepcopy(trainer.model), copy.deepcopy(trainer.method.key_encoder)
        trainer.train_step(task)
        with torch.no_grad():
            online(task.views)
            plain = F.normalize(key_encoder(task.clean_views)[1], dim=1)
        for (name, a), b in zip(trainer.model.named_buffers(), online.buffers()):
            assert torch.equal(a, b), name
        assert (trainer.method._last_keys - plain).abs().max() > 1e-3
    assert draws == [(3, 0), (3, 1)]   # train.seed reaches the draw


WORLD, VIEWS, LOCAL, DIM, QUEUE = 2, 2, 3, 4, 20


def _keys_of_step(step: int) -> torch.Tensor:
    """The global task's key rows at `step` (view-major over the global batch)."""
    return torch.randn(VIEWS * WORLD * LOCAL, DIM, generator=torch.Generator().manual_seed(100 + step))


def _local_rows(rank: int) -> torch.Tensor:
    batch = WORLD * LOCAL
    return torch.tensor([v * batch + rank * LOCAL + i for v in range(VIEWS) for i in range(LOCAL)])


def _rank_worker(rank: int, port: int, out: str) -> None:
    from fastssl.engine.distributed import Dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.manual_seed(0)                                           # the run's seed: the same initial queue
    head = MoCoHead(DIM, QUEUE, impl="reference")
    ddp = Dist(rank, WORLD, rank)
    losses = []
    for step in range(4):                                          # 12 keys per step: wraps at step 1
        keys = _keys_of_step(step)
        z = (keys + 0.1)[_local_rows(rank)]
        gathered_z, gathered_keys = ddp.gather_rows(z, VIEWS), ddp.gather_rows(keys[_local_rows(rank)], VIEWS)
        losses.append(head.rank_loss(gathered_z, TaskLayout(1, 1), gathered_keys, RankRows(rank, WORLD)).detach())
        head.after_step(step)
    torch.save({"state": head.state_dict(), "losses": torch.stack(losses)}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()




def test_two_ranks_fed_the_gathered_keys_keep_identical_queues(tmp_path, gloo_port):
    mp.spawn(_rank_worker, args=(gloo_port, str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.manual_seed(0)
    single = MoCoHead(DIM, QUEUE, impl="reference")
    shares = []
    for step in range(4):
        keys = _keys_of_step(step)
        shares.append(single(keys + 0.1, TaskLayout(1, 1), keys).detach() / WORLD)
        single.after_step(step)
    assert int(single.queue_ptr) == (4 * VIEWS * WORLD * LOCAL) % QUEUE
    for r, saved in enumerate(ranks):
        for name, tensor in single.state_dict().items():
            assert torch.equal(saved["state"][name], tensor), f"rank {r}: {name}"
        torch.testing.assert_close(saved["losses"], torch.stack(shares), rtol=1e-6, atol=0)


def test_config_rules():
    base = ["method.name=moco", "loader.batch_size=64"]
    with pytest.raises(ConfigError, match=r"method.moco.queue_size=100: must be >= the keys one step enqueues.*"
                                          r"= 2 x 64 = 128"):
        methods.check(load_config(None, base + ["method.moco.queue_size=100"]))
    with pytest.raises(ConfigError, match=r"= 3 x 64 = 192"):
        methods.check(load_config(None, base + ["method.moco.queue_size=128", "loader.views=3", "task.n_query=2"]))
    methods.check(load_config(None, base + ["method.moco.queue_size=128"]))   # one step's keys exactly
    with pytest.raises(ConfigError, match=r"method.moco.momentum=1.5: must be a finite number in \[0.0, 1.0\]"):
        methods.check(load_config(None, base + ["method.moco.momentum=1.5"]))
    with pytest.raises(ConfigError, match=re.escape("method.moco.temperature=0.0: must be a finite number in [0.0001, 10000.0]")):
        methods.check(load_config(None, base + ["method.moco.temperature=0"]))
    with pytest.raises(ConfigError, match="unknown key 'method.moco.queue'"):
        methods.check(load_config(None, base + ["method.moco.queue=5"]))
    rule = ("must be 1 (no shuffle) or divide each rank's batch, loader.batch_size / world = {}, into chunks of "
            "at least 2 images")
    for splits, world, batch in ((3, 1, "64 / 1 = 64"), (0, 1, "64 / 1 = 64"), (32, 2, "64 / 2 = 32")):
        message = f"method.moco.shuffle_bn_splits={splits}: " + rule.format(batch)
        with pytest.raises(ConfigError, match=re.escape(message)):
            methods.check(load_config(None, base + [f"method.moco.shuffle_bn_splits={splits}"]), world)
    for splits, world in ((16, 2), (32, 1), (1, 1)):   # chunks of 2 images per rank; 1: no shuffle
        methods.check(load_config(None, base + [f"method.moco.shuffle_bn_splits={splits}"]), world)


@pytest.mark.parametrize("files", [
    ["configs/quickstart.yaml"],
    ["configs/cifar10_jpeg.yaml"],
    ["configs/cifar10_jpeg.yaml", "configs/tricks/task_aug.yaml", "configs/tricks/rot_pred.yaml",
     "configs/tricks/cutmix.yaml"],
    ["configs/imagenet_resnet50.yaml", "configs/augment/simclr_imagenet.yaml"],
], ids=["quickstart", "cifar10_jpeg", "cifar10_jpeg+tricks", "imagenet"])
def test_config_file_loads_and_passes_the_methods_check(files, tmp_path):
    sets = [] if files == ["configs/quickstart.yaml"] else [f"data.path={tmp_path}"]
    cfg = load_config([ROOT / f for f in files] + [ROOT / "configs/heads/moco.yaml"], sets)
    methods.check(cfg)
    settings = cfg.method.settings
    assert ((cfg.method.name, settings.temperature, settings.momentum, settings.queue_size, settings.shuffle_bn_splits)
            == ("moco", 0.2, 0.99, 4096, 8))


def test_training_steps_update_the_key_encoder_by_ema_and_fill_the_queue(tmp_path):
    cfg = load_config(None, RUN + ["train.max_steps=2"])
    trainer = Trainer(cfg, tmp_path)
    head, online = trainer.method, trainer.model
    for (name, a), b in zip(online.state_dict().items(), head.key_encoder.state_dict().values()):
        assert torch.equal(a, b), name
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in head.key_encoder.parameters())
    assert all(not p.requires_grad for p in head.key_encoder.parameters())
    initial = head.queue.clone()

    batches, seen = iter(trainer.loader), []
    for step in range(2):
        before = [p.detach().double().clone() for p in head.key_encoder.parameters()]
        batch = next(batches)
        trainer.train_step(trainer.tasks.build(batch.views, batch.index, 0, step))
        for (name, k), o, k0 in zip(head.key_encoder.named_parameters(), online.parameters(), before):
            assert k.grad is None, name
            torch.testing.assert_close(k.detach().double(), 0.9 * k0 + 0.1 * o.detach().double(), rtol=0, atol=1e-6,
                                       msg=name)
        seen.append(head._last_keys.clone())
        assert seen[-1].shape == (32, 16)
        torch.testing.assert_close(seen[-1].norm(dim=1), torch.ones(32))
    # 32 keys per step into 48 slots: step 0 fills 0..31, step 1 fills 32..47 and wraps into 0..15.
    assert int(head.queue_ptr) == 16
    assert torch.equal(head.queue[32:48], seen[1][:16]) and torch.equal(head.queue[:16], seen[1][16:])
    assert torch.equal(head.queue[16:32], seen[0][16:])
    assert not torch.equal(head.queue[16:32], initial[16:32])
    assert trainer._task_top1() is not None


def test_resume_is_exact_for_model_key_encoder_and_queue(tmp_path, crash_after_first_checkpoint):
    """4 steps straight == 2 steps, checkpoint, a crash, resume; task rotation and CutMix on."""
    cfg = load_config(None, RUN + ["train.max_steps=4", "train.ckpt_every=2", "task.rotation_p=0.5",
                                   "task.query_mix=cutmix"])
    Trainer(cfg, tmp_path / "straight").fit()
    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed"))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["run"]["step"] == 2
    Trainer(cfg, tmp_path / "resumed", resume=True).fit()

    a, b = (load_checkpoint(tmp_path / run / "last.pt") for run in ("straight", "resumed"))
    assert a["run"]["step"] == b["run"]["step"] == 4
    assert {"queue", "queue_ptr"} <= a["method"].keys() and int(a["method"]["queue_ptr"]) == (4 * 32) % 48
    for part in ("model", "method"):
        assert a[part].keys() == b[part].keys()
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), f"{part}.{name}"
    keys = {k.removeprefix("key_encoder."): v for k, v in a["method"].items() if k.startswith("key_encoder.")}
    assert keys.keys() == a["model"].keys()

    def records(run):
        return [r for r in read_metrics(tmp_path / run / "metrics.jsonl") if "loss" in r]

    straight, resumed = records("straight"), records("resumed")
    assert len(straight) == 4 and [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    assert all("task_top1" in r for r in straight)
