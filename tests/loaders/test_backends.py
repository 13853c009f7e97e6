"""The training backends: sharding, determinism, exact resume, layout; and the eval batches.

The data are images whose pixels encode their index (channel 0: index % 256, channel 1: index // 256;
channel 2 a gradient so that crops differ), so a batch can be checked against its `index`.
"""
import importlib.util

import numpy as np
import pytest
import torch

from fastssl.config import Config
from fastssl.loaders.augment import IMAGENET_MEAN, IMAGENET_STD
from fastssl.loaders.datasets.base import ArrayDataset, DataError
from fastssl.loaders.factory import build_eval_batches, build_train_loader
from fastssl.loaders.settings import CropGroup

N, SIZE, BATCH, CLASSES = 100, 16, 32, 7          # 3 full batches of 32, a remainder of 4
# dali joins where it is installed (the optional extra); its own tests say why they skip.
BACKENDS = ["tensor", "torchvision"] + (["dali"] if importlib.util.find_spec("nvidia.dali") else [])


def encoded_dataset(n: int = N) -> ArrayDataset:
    i = np.arange(n)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    images[..., 0] = (i % 256)[:, None, None]
    images[..., 1] = (i // 256)[:, None, None]
    images[..., 2] = np.arange(SIZE)[:, None] * SIZE + np.arange(SIZE)
    return ArrayDataset(images, i % CLASSES)


DATA = encoded_dataset()
# Multi-crop: 2 global views at SIZE and 2 local views at half of it, each group with its own crop scale.
CROPS = [CropGroup(2, SIZE, [0.3, 1.0]), CropGroup(2, SIZE // 2, [0.05, 0.3])]
SIZES = {False: [SIZE, SIZE], True: [SIZE, SIZE, SIZE // 2, SIZE // 2]}


def config(backend: str, workers: int = 0, batch: int = BATCH, seed: int = 0, identity: bool = False,
           crops: bool = False) -> Config:
    cfg = Config()
    cfg.data.image_size, cfg.train.seed = SIZE, seed
    cfg.loader.backend, cfg.loader.batch_size, cfg.loader.workers = backend, batch, workers
    if crops:   # colour by the torch reference: the Triton interpreter is slow (small views: test_multicrop.py)
        cfg.loader.views, cfg.task.n_query, cfg.augment.crops = len(SIZES[True]), len(SIZES[True]) - 1, CROPS
        cfg.augment.impl = "reference"
    if identity:
        a = cfg.augment
        a.crop_scale_min = a.crop_scale_max = 1.0
        a.flip_p = a.jitter_p = a.grayscale_p = 0.0
    return cfg


def loader(backend: str, rank: int = 0, world: int = 1, **kw):
    return build_train_loader(config(backend, **kw).load_settings(), DATA, "cpu", rank, world)


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x.index, y.index) and torch.equal(x.labels, y.labels)
        assert all(torch.equal(u, v) for u, v in zip(x.views, y.views, strict=True))


def decode(view: torch.Tensor) -> torch.Tensor:
    """Image index from the centre pixel of an unaugmented, normalised view."""
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3), torch.tensor(IMAGENET_STD).view(1, 3)
    pixel = torch.round((view[:, :, SIZE // 2, SIZE // 2] * std + mean) * 255).long()
    return pixel[:, 0] + 256 * pixel[:, 1]


@pytest.mark.parametrize("crops", [False, True], ids=["one size", "multi-crop"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layout_shapes_and_labels(backend, crops):
    batches = list(loader(backend, crops=crops))
    assert len(batches) == len(loader(backend)) == N // BATCH
    for b in batches:
        assert [v.shape[-1] for v in b.views] == SIZES[crops]          # view-major, global views first
        for v, size in zip(b.views, SIZES[crops]):
            assert v.shape == (BATCH, 3, size, size) and v.dtype == torch.float32
            assert v.is_contiguous(memory_format=torch.channels_last)
        assert b.index.dtype == b.labels.dtype == torch.int64 and b.index.shape == b.labels.shape == (BATCH,)
        assert torch.equal(b.labels, b.index % CLASSES)
        # Views of one image differ (crop, flip, colour drawn per view) yet belong to the same row.
        assert ((b.views[0] - b.views[1]).flatten(1).abs().amax(1) > 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unaugmented_views_show_the_indexed_image(backend):
    for b in loader(backend, identity=True):
        assert torch.equal(decode(b.views[0]), b.index) and torch.equal(decode(b.views[1]), b.index)


@pytest.mark.parametrize("crops", [False, True], ids=["one size", "multi-crop"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_shards_split_each_global_batch(backend, crops):
    whole, r0, r1 = (list(loader(backend, rank, world, crops=crops)) for rank, world in ((0, 1), (0, 2), (1, 2)))
    seen = []
    for w, a, b in zip(whole, r0, r1, strict=True):
        assert len(a.index) == len(b.index) == BATCH // 2
        assert not set(a.index.tolist()) & set(b.index.tolist())
        # A shard is a slice of the world-1 batch, augmentation included: world size changes nothing.
        assert torch.equal(torch.cat([a.index, b.index]), w.index)
        for v, va, vb in zip(w.views, a.views, b.views, strict=True):
            assert torch.equal(torch.cat([va, vb]), v)
        seen += a.index.tolist() + b.index.tolist()
    assert len(seen) == len(set(seen)) == (N // BATCH) * BATCH


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_and_epoch_determine_the_batches(backend):
    first = list(loader(backend, seed=5))
    assert_same_batches(first, list(loader(backend, seed=5)))
    assert not torch.equal(list(loader(backend, seed=6))[0].index, first[0].index)
    again = loader(backend, seed=5)
    again.set_epoch(1)
    epoch1 = torch.cat([b.index for b in again])
    epoch0 = torch.cat([b.index for b in first])
    assert len(set(epoch1.tolist())) == len(epoch1) and not torch.equal(epoch0, epoch1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_epoch_reproduces_the_rest(backend):
    reference = loader(backend)
    expected = []
    for epoch in (0, 1):
        reference.set_epoch(epoch)
        expected += list(reference)
    assert reference.state_dict() == {"epoch": 2, "batch": 0, "seed": 0}

    interrupted, taken = loader(backend), []
    for b in interrupted:
        taken.append(b)
        if len(taken) == 2:
            break
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batch": 2, "seed": 0}
    resumed, rest = loader(backend, seed=99), []     # the checkpoint's seed wins
    resumed.load_state_dict(state)
    for epoch in (0, 1):
        resumed.set_epoch(epoch)                     # the current epoch: keeps the position
        rest += list(resumed)
    assert_same_batches(taken + rest, expected)


def test_torchvision_independent_of_workers_and_persistent_workers_resume():
    serial = list(loader("torchvision", workers=0))
    parallel = loader("torchvision", workers=2)
    assert_same_batches(list(parallel), serial)
    # Persistent workers, an abandoned iteration, then a rewind: still the same batches.
    next(iter(parallel))
    parallel.load_state_dict({"epoch": 0, "batch": 1, "seed": 0})
    assert_same_batches(list(parallel), serial[1:])


@pytest.mark.parametrize("backend", BACKENDS)
def test_loading_leaves_the_global_rng_alone(backend):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    list(loader(backend))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("size", [SIZE, 12])
def test_eval_batches_cover_the_split_in_order_and_agree(size):
    results = {}
    for backend in BACKENDS:
        cfg = config(backend)
        cfg.data.image_size = size
        batches = build_eval_batches(cfg.load_settings(), DATA, "cpu", batch_size=40)
        torch.manual_seed(0)
        rng = torch.get_rng_state()
        first, second = list(batches), list(batches)         # re-iterable
        assert torch.equal(torch.get_rng_state(), rng)
        assert len(batches) == len(first) == 3
        for (x, y), (x2, y2) in zip(first, second):
            assert torch.equal(x, x2) and torch.equal(y, y2)
            assert x.shape[1:] == (3, size, size) and x.is_contiguous(memory_format=torch.channels_last)
        results[backend] = torch.cat([x for x, _ in first]), torch.cat([y for _, y in first])
        assert torch.equal(results[backend][1], torch.as_tensor(DATA.labels))
    # Both resize with PIL's bilinear filter, then normalise the same uint8 values.
    torch.testing.assert_close(results["tensor"][0], results["torchvision"][0], atol=1e-6, rtol=0)
    if size == SIZE:
        assert torch.equal(decode(results["tensor"][0]), torch.arange(N))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_settings_are_named(backend):
    with pytest.raises(ValueError, match=r"loader.batch_size=33: .*multiple of the world size \(2\)"):
        loader(backend, rank=0, world=2, batch=33)
    with pytest.raises(DataError, match=r"100 images, fewer than one global batch \(loader.batch_size=128\)"):
        loader(backend, batch=128)
    with pytest.raises(ValueError, match=r"batch=3.*0 <= batch < 3"):
        loader(backend).load_state_dict({"epoch": 0, "batch": 3, "seed": 0})
    with pytest.raises(ValueError, match="missing seed"):
        loader(backend).load_state_dict({"epoch": 0, "batch": 0})
    cfg = config(backend)
    cfg.loader.backend = "ffmpeg"
    with pytest.raises(ValueError, match="loader.backend='ffmpeg'"):
        build_train_loader(cfg.load_settings(), DATA, "cpu")
