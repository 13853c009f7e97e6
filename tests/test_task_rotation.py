"""Task augmentation by rotations: exact pixels (vs torch.rot90 per sample), the same k for all views
of a sample, k a function of (seed, epoch, sample) only, and the asked-for share of rotated samples."""
import pytest
import torch

from fastssl.config import load_config
from fastssl.engine.metrics import read_metrics
from fastssl.engine.trainer import Trainer
from fastssl.task.rotation import TaskRotation


def test_every_view_of_a_sample_is_rot90_by_its_k_exactly():
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(6, 3, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last) for _ in range(3)]
    k = torch.tensor([0, 1, 2, 3, 1, 0])
    rotated = TaskRotation.apply(views, k)
    for view, out in zip(views, rotated):
        assert out.is_contiguous(memory_format=torch.channels_last)
        for i in range(6):
            assert torch.equal(out[i], torch.rot90(view[i], int(k[i]), dims=(1, 2)))


def test_k_depends_on_seed_epoch_and_sample_only():
    rotation = TaskRotation(0.5, 1000, seed=3)
    whole = rotation.rotations(2, torch.arange(1000))
    shuffled = torch.randperm(1000)
    assert torch.equal(rotation.rotations(2, shuffled), whole[shuffled])            # any batch composition
    assert torch.equal(TaskRotation(0.5, 1000, seed=3).rotations(2, torch.arange(1000)), whole)  # any resume
    assert not torch.equal(rotation.rotations(3, torch.arange(1000)), whole)        # a new draw each epoch
    assert not torch.equal(TaskRotation(0.5, 1000, seed=4).rotations(2, torch.arange(1000)), whole)


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_share_of_rotated_samples_and_their_angles(p):
    k = TaskRotation(p, 40_000, seed=0).rotations(0, torch.arange(40_000))
    assert float((k > 0).float().mean()) == pytest.approx(p, abs=0.01)
    if p:
        counts = torch.bincount(k[k > 0], minlength=4)[1:].float() / int((k > 0).sum())
        assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.015)


def test_bad_probability_and_non_square_views_are_refused():
    with pytest.raises(ValueError, match=r"probability 1.5: must be in \[0, 1\]"):
        TaskRotation(1.5, 10, seed=0)
    with pytest.raises(ValueError, match="square views, got 4x6"):
        TaskRotation.apply([torch.zeros(2, 3, 4, 6)], torch.tensor([1, 0]))


def test_trainer_feeds_rotated_views_and_stays_deterministic(tmp_path, monkeypatch):
    """With p = 1 every training image reaches the model rotated, and two runs log the same losses."""
    run = ["data.num_train=64", "data.num_test=32", "loader.batch_size=16", "train.max_steps=2",
           "train.device=cpu", "train.precision=fp32", "train.deterministic=true", "train.log_every=1", "knn.k=5",
           "knn.every_epochs=0", "model.projector_hidden=16", "model.projector_out=8",
           "method.loss_impl=reference", "augment.impl=reference", "task.rotation_p=1.0"]
    seen = []
    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, task: (seen.append(task.views), original(self, task))[1])
    batch = next(iter(Trainer(load_config(None, run), tmp_path / "first-batch").loader))
    trainer = Trainer(load_config(None, run), tmp_path / "a")
    trainer.fit()
    k = trainer.tasks.rotation.rotations(0, batch.index)
    assert bool((k > 0).all())
    assert torch.equal(seen[0][0], TaskRotation.apply(batch.views, k)[0])
    Trainer(load_config(None, run), tmp_path / "b").fit()
    losses = [[r["loss"] for r in read_metrics(tmp_path / d / "metrics.jsonl") if "loss" in r] for d in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == 2
