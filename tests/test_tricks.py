"""The meta-learning tricks and the support/query task: query CutMix/Mixup pixels
and draws, every head's mixed loss against float64 loops with soft targets, rotation prediction, the
view bookkeeping with several support and query views, and the trainer with every trick on."""
import math

import numpy as np
import pytest
import torch

from fastssl.checkpoint import load_checkpoint
from fastssl.config import load_config
from fastssl.engine.metrics import read_metrics
from fastssl.task.builder import TaskBuilder
from fastssl.engine.trainer import Trainer
from fastssl.methods.byol import byol_loss
from fastssl.methods.contrastive import ContrastiveHead
from fastssl.methods.protonet import ProtoNetHead
from fastssl.methods.r2d2 import R2D2Head
from fastssl.methods.svm import SVMHead
from fastssl.task.rotation_prediction import RotationPredictor
from fastssl.task.layout import QueryMix, TaskLayout, split_views
from fastssl.task.query_mix import QueryMixer
from fastssl.task.rotation import TaskRotation

# -- the mixer: pixels and draws ---------------------------------------------------------------------


def test_mixup_blends_only_query_views_with_the_partner():
    views = [torch.rand(6, 3, 8, 8, dtype=torch.float64) for _ in range(3)]
    draw = QueryMixer("mixup", 1.0, 1.0, seed=0).draw(step=5, batch=6, side=(8, 8))
    out = QueryMixer.apply(views, n_supp=1, draw=draw)
    assert out[0] is views[0]
    for v in (1, 2):
        for i in range(6):
            j = int(draw.partner[i])
            expected = draw.lam * views[v][i] + (1 - draw.lam) * views[v][j]
            torch.testing.assert_close(out[v][i], expected, rtol=0, atol=1e-15)
    assert sorted(draw.partner.tolist()) == list(range(6))


def test_cutmix_pastes_the_box_and_lam_is_the_kept_area():
    views = [torch.rand(4, 3, 10, 12) for _ in range(2)]
    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
    mixer = QueryMixer("cutmix", 1.0, 1.0, seed=3)
    for step in range(20):
        draw = mixer.draw(step, 4, (10, 12))
        y0, y1, x0, x1 = draw.box
        assert 0 <= y0 <= y1 <= 10 and 0 <= x0 <= x1 <= 12
        assert draw.lam == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 120, abs=1e-15)
        out = QueryMixer.apply(views, 1, draw)
        inside = torch.zeros(10, 12, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        for i in range(4):
            j = int(draw.partner[i])
            assert torch.equal(out[1][i][:, inside], views[1][j][:, inside])
            assert torch.equal(out[1][i][:, ~inside], views[1][i][:, ~inside])
        assert out[1].is_contiguous(memory_format=torch.channels_last)


def test_draws_are_a_function_of_seed_and_step_with_partners_inside_blocks():
    mixer = QueryMixer("mixup", 1.0, 0.4, seed=7, blocks=3)
    a, b = mixer.draw(11, 12, (4, 4)), QueryMixer("mixup", 1.0, 0.4, seed=7, blocks=3).draw(11, 12, (4, 4))
    assert torch.equal(a.partner, b.partner) and a.lam == b.lam
    assert not torch.equal(a.partner, mixer.draw(12, 12, (4, 4)).partner)
    for step in range(10):
        partner = mixer.draw(step, 12, (4, 4)).partner
        assert torch.equal(partner // 4, torch.arange(12) // 4)     # within each block of 4 images
    lams = [mixer.draw(s, 12, (4, 4)).lam for s in range(4000)]
    assert np.mean(lams) == pytest.approx(0.5, abs=0.02)             # Beta(0.4, 0.4): mean 1/2,
    assert np.var(lams) == pytest.approx(0.25 / 1.8, abs=0.01)       # variance 1 / (4 (2 alpha + 1))
    applied = [QueryMixer("cutmix", 0.3, 1.0, seed=1).draw(s, 8, (4, 4)) is not None for s in range(4000)]
    assert np.mean(applied) == pytest.approx(0.3, abs=0.03)


def test_mixer_rules():
    with pytest.raises(ValueError, match="query mixing mode 'none'"):
        QueryMixer("none", 1.0, 1.0, 0)
    with pytest.raises(ValueError, match="3 task blocks must divide the batch of 8"):
        QueryMixer("mixup", 1.0, 1.0, 0, blocks=3).draw(0, 8, (4, 4))


# -- mixed losses against float64 loops with soft targets --------------------------------------------

def _mix(batch: int, lam: float, seed: int, blocks: int = 1) -> QueryMix:
    g = torch.Generator().manual_seed(seed)
    b = batch // blocks
    return QueryMix(torch.cat([torch.randperm(b, generator=g) + t * b for t in range(blocks)]), lam)


def _soft_xent(logits: torch.Tensor, i: int, j: int, lam: float) -> torch.Tensor:
    log_p = torch.log_softmax(logits, 0)
    return -(lam * log_p[i] + (1 - lam) * log_p[j])


def test_contrastive_mixed_equals_explicit_positive_sets():
    """Term 2 relabels the mixed query rows as their partner: loops over anchors and positives."""
    torch.manual_seed(0)
    n_supp, n_query, batch, tau, lam = 1, 2, 5, 0.3, 0.35
    layout = TaskLayout(n_supp, n_query, _mix(batch, lam, 1))
    z = torch.randn(3 * batch, 6, dtype=torch.float64, requires_grad=True)
    loss = ContrastiveHead(tau)(z, layout)

    def nt(ids):
        zn = torch.nn.functional.normalize(z, dim=1)
        terms = []
        for a in range(len(ids)):
            logits = torch.stack([zn[a] @ zn[k] / tau for k in range(len(ids)) if k != a])
            others = [k for k in range(len(ids)) if k != a]
            pos = [others.index(p) for p in others if ids[p] == ids[a]]
            terms.append(-torch.log_softmax(logits, 0)[pos].mean())
        return torch.stack(terms).mean()

    images = [r % batch for r in range(3 * batch)]
    swapped = images[:batch] + [int(layout.mix.partner[i]) for i in images[batch:]]
    expected = lam * nt(images) + (1 - lam) * nt(swapped)
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-12)
    g, g_ref = torch.autograd.grad(loss, z)[0], torch.autograd.grad(expected, z)[0]
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_protonet_and_r2d2_mixed_equal_soft_target_cross_entropy():
    torch.manual_seed(1)
    batch, tau, lam = 6, 0.4, 0.7
    layout = TaskLayout(2, 2, _mix(batch, lam, 2))
    z = torch.randn(4 * batch, 5, dtype=torch.float64)
    zn = torch.nn.functional.normalize(z, dim=1).view(4, batch, 5)
    protos = zn[:2].mean(0)
    partner = layout.mix.partner
    expected = torch.stack([_soft_xent(-((zn[v, i] - protos) ** 2).sum(1) / tau, i, int(partner[i]), lam)
                            for v in (2, 3) for i in range(batch)]).mean()
    assert float(ProtoNetHead(tau)(z, layout)) == pytest.approx(float(expected), rel=1e-12)
    head = R2D2Head(tau, ridge_lambda=0.5).double()
    x = zn[:2].reshape(-1, 5)
    y = torch.eye(batch, dtype=torch.float64).repeat(2, 1)
    ridge = head.log_lambda.detach().exp()   # 0.5 up to the float32 rounding of log(0.5)
    w = torch.linalg.solve(x.T @ x + ridge * torch.eye(5, dtype=torch.float64), x.T @ y)
    expected = torch.stack([_soft_xent(zn[v, i] @ w / tau, i, int(partner[i]), lam)
                            for v in (2, 3) for i in range(batch)]).mean()
    assert float(head(z, layout).detach()) == pytest.approx(float(expected.detach()), rel=1e-12)


def test_svm_mixed_is_the_soft_target_loss_over_its_own_logits_with_partners_in_the_task():
    torch.manual_seed(2)
    batch, tasks, lam = 8, 2, 0.25
    layout = TaskLayout(1, 1, _mix(batch, lam, 3, blocks=tasks))
    z = torch.randn(2 * batch, 6, dtype=torch.float64)
    head = SVMHead(0.2, c=0.3, iters=50, tasks=tasks).double()
    logits, images = head.task_logits(z, layout)
    b = batch // tasks
    expected = torch.stack([_soft_xent(logits[t, j], j, int(layout.mix.partner[t * b + j]) - t * b, lam)
                            for t in range(tasks) for j in range(b)]).mean()
    assert float(head(z, layout).detach()) == pytest.approx(float(expected.detach()), rel=1e-12)


def test_byol_mixed_query_regresses_the_mixed_target():
    torch.manual_seed(3)
    batch, lam = 4, 0.6
    layout = TaskLayout(1, 2, _mix(batch, lam, 4))
    p, t = torch.randn(3 * batch, 5, dtype=torch.float64), torch.randn(3 * batch, 5, dtype=torch.float64)
    mse = lambda a, b: float(((a / a.norm() - b / b.norm()) ** 2).sum())  # noqa: E731

    def term(v: int, w: int, i: int) -> float:
        """||p_v - t_w||^2 of image i (normalised); a mixed query (v >= 1) regresses lam L(i) + (1 - lam) L(partner)."""
        pv, j = p[v * batch + i], int(layout.mix.partner[i])
        if v == 0:
            return mse(pv, t[w * batch + i])
        return lam * mse(pv, t[w * batch + i]) + (1 - lam) * mse(pv, t[w * batch + j])

    # BYOL's paper loss: the symmetrised sum L + L~ for each unordered view pair, averaged over pairs and images.
    total = sum(term(v, w, i) + term(w, v, i) for i in range(batch) for v in range(3) for w in range(v + 1, 3))
    assert float(byol_loss(p, t, layout)) == pytest.approx(total / (batch * 3), rel=1e-12)


def test_rotation_predictor_equals_explicit_cross_entropy_and_mixes_labels():
    torch.manual_seed(4)
    batch, lam = 5, 0.3
    z = torch.randn(2 * batch, 7, dtype=torch.float64)
    rotations = torch.tensor([0, 3, 1, 2, 1])
    head = RotationPredictor(7).double()
    logits = head.classifier(z)
    plain = torch.stack([-torch.log_softmax(logits[r], 0)[rotations[r % batch]] for r in range(2 * batch)]).mean()
    assert float(head(z, TaskLayout(1, 1), rotations).detach()) == pytest.approx(float(plain.detach()), rel=1e-12)
    layout = TaskLayout(1, 1, _mix(batch, lam, 5))
    partner = layout.mix.partner
    rows = [-torch.log_softmax(logits[i], 0)[rotations[i]] for i in range(batch)]
    rows += [_soft_xent(logits[batch + i], int(rotations[i]), int(rotations[partner[i]]), lam) for i in range(batch)]
    assert float(head(z, layout, rotations).detach()) == pytest.approx(float(torch.stack(rows).mean().detach()), rel=1e-12)
    with pytest.raises(ValueError, match=r"rotations \(4,\) must be one per image \(5,\)"):
        head(z, TaskLayout(1, 1), rotations[:4])


# -- the task: views, layout, builder ----------------------------------------------------------------

def test_split_views_two_support_two_query_bookkeeping():
    """4 views, n_supp 2, n_query 2, 3 images: row r = view r // 3 of image r % 3, exactly."""
    z = torch.eye(12, dtype=torch.float64)
    task = split_views(z, TaskLayout(2, 2), "protonet")
    assert task.support.argmax(-1).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert task.queries.argmax(-1).tolist() == [6, 7, 8, 9, 10, 11]
    assert task.targets.tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="protonet: 12 rows, n_supp=2, n_query=3"):
        split_views(z, TaskLayout(2, 3), "protonet")


def test_builder_rotates_then_mixes_and_keeps_clean_views():
    cfg = load_config(None, ["task.rotation_p=1.0", "task.query_mix=mixup", "loader.views=3",
                             "task.n_query=2", "method.name=svm", "method.svm.tasks=2", "loader.batch_size=8"])
    builder = TaskBuilder(cfg.task, num_samples=100, seed=0, blocks=2)   # svm's two tasks
    views = [torch.rand(8, 3, 6, 6) for _ in range(3)]
    index = torch.arange(10, 18)
    task = builder.build(views, index, epoch=1, step=4)
    k = TaskRotation(1.0, 100, 0).rotations(1, index)
    rotated = TaskRotation.apply(views, k)
    assert torch.equal(task.rotations, k)
    assert all(torch.equal(a, b) for a, b in zip(task.clean_views, rotated))
    draw = QueryMixer("mixup", 1.0, 1.0, seed=0, blocks=2).draw(4, 8, (6, 6))
    assert torch.equal(task.layout.mix.partner, draw.partner) and task.layout.mix.lam == draw.lam
    assert torch.equal(task.views[0], rotated[0])
    assert all(torch.equal(a, b) for a, b in zip(task.views[1:], QueryMixer.apply(rotated, 1, draw)[1:]))
    assert (task.layout.n_supp, task.layout.n_query) == (1, 2)
    with pytest.raises(ValueError, match="task: 2 views, but n_supp \\+ n_query = 1 \\+ 2"):
        builder.build(views[:2], index, 1, 4)


# -- the trainer with every trick --------------------------------------------------------------------

TRICKS_RUN = ["data.num_train=96", "data.num_test=32", "loader.batch_size=16", "train.epochs=1", "train.max_steps=6",
              "train.device=cpu", "train.precision=fp32", "train.deterministic=true", "train.log_every=2", "knn.k=5",
              "knn.every_epochs=0", "model.projector_hidden=16", "model.projector_out=8", "method.loss_impl=reference",
              "augment.impl=reference", "task.rotation_p=0.5", "task.rotation_weight=0.5",
              "task.query_mix=cutmix", "method.name=protonet", "loader.views=3", "task.n_supp=2"]


def test_rotation_prediction_trains_logs_and_resumes_exactly(tmp_path, crash_after_first_checkpoint):
    straight = Trainer(load_config(None, TRICKS_RUN), tmp_path / "straight")
    optimized = {id(p) for group in straight.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in straight.auxiliaries[0].parameters())
    before = straight.auxiliaries[0].classifier.weight.detach().clone()
    straight.fit()
    assert not torch.equal(before, straight.auxiliaries[0].classifier.weight)
    records = [r for r in read_metrics(tmp_path / "straight" / "metrics.jsonl") if "loss" in r]
    assert len(records) == 3 and all(math.isfinite(r["rotation_loss"]) for r in records)
    # the logged loss holds the weighted rotation term: it exceeds half of it (head losses are > 0)
    assert all(r["loss"] > 0.5 * r["rotation_loss"] for r in records)
    state = load_checkpoint(tmp_path / "straight" / "last.pt")
    assert torch.equal(state["auxiliaries"]["0.classifier.weight"], straight.auxiliaries[0].classifier.weight)

    cfg = load_config(None, TRICKS_RUN + ["train.ckpt_every=3"])
    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed"))
    Trainer(cfg, tmp_path / "resumed", resume=True).fit()
    losses = [[(r["loss"], r["rotation_loss"]) for r in read_metrics(tmp_path / d / "metrics.jsonl") if "loss" in r]
              for d in ("straight", "resumed")]
    assert losses[0] == losses[1]
