"""The `ffcv` backend over .beton files: the Loader contract (shards, seeds, resume, layout) and the decode.

Pixels encode the image index (red: i % 256, green: i // 256, blue a gradient so crops differ), so a
batch decoded without augmentation can be checked against its `index`.
"""
import numpy as np
import pytest
import torch
from PIL import Image

# Through ffcv_imports, never `import ffcv`: the bare import leaves torch on one thread for the rest of
# the test process (later float comparisons then see other rounding).
pytest.importorskip("fastssl.loaders.ffcv_imports",
                    reason="ffcv not installed (pip install -e '.[ffcv]'; needs libturbojpeg and OpenCV headers)")

from fastssl.config import Config, ConfigError, load_config  # noqa: E402
from fastssl.loaders.augment import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from fastssl.loaders.convert import convert  # noqa: E402
from fastssl.loaders.datasets.base import ArrayDataset, DataError  # noqa: E402
from fastssl.loaders.factory import build_train_loader  # noqa: E402
from fastssl.loaders.ffcv_backend import BetonFile  # noqa: E402
from fastssl.loaders.settings import CropGroup  # noqa: E402

N, S, B, CLASSES = 96, 16, 32, 5          # 3 full batches: every image once per epoch


def index_images(n: int, side: int) -> np.ndarray:
    images = np.zeros((n, side, side, 3), np.uint8)
    images[..., 0] = (np.arange(n) % 256)[:, None, None]
    images[..., 1] = (np.arange(n) // 256)[:, None, None]
    images[..., 2] = (np.arange(side) * (255 // side))[None, None, :]
    return images


DATA = ArrayDataset(index_images(N, S), np.arange(N) % CLASSES)


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    return convert(DATA, tmp_path_factory.mktemp("ffcv") / "index.beton", raw=True, workers=1).path


def make(beton, rank=0, world=1, seed=0, workers=0, identity=False, views=2, data=DATA, crops=None):
    cfg = Config()
    cfg.data.image_size, cfg.train.seed = S, seed
    cfg.loader.backend, cfg.loader.beton, cfg.loader.batch_size = "ffcv", str(beton), B
    cfg.loader.workers, cfg.loader.views = workers, views
    if crops:   # colour by the torch reference: the Triton interpreter is slow (small views: test_multicrop.py)
        cfg.augment.crops, cfg.augment.impl = crops, "reference"
    if identity:
        cfg.augment.crop_scale_min = 1.0
        cfg.augment.flip_p = cfg.augment.jitter_p = cfg.augment.grayscale_p = 0.0
    return build_train_loader(cfg.load_settings(), data, "cpu", rank, world)


def pixel_index(view: torch.Tensor) -> torch.Tensor:
    rgb = view[:, :, 0, 0] * torch.tensor(IMAGENET_STD)[None] + torch.tensor(IMAGENET_MEAN)[None]
    red, green = torch.round(rgb[:, :2] * 255).long().unbind(1)
    return red + 256 * green


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.index, y.index) and torch.equal(x.labels, y.labels)
        and all(torch.equal(u, v) for u, v in zip(x.views, y.views, strict=True)) for x, y in zip(a, b))


CROPS = [CropGroup(2, S, [0.3, 1.0]), CropGroup(2, S // 2, [0.05, 0.3])]   # 2 global, 2 local views at S / 2


@pytest.mark.parametrize("crops, sizes", [(None, [S, S]), (CROPS, [S, S, S // 2, S // 2])],
                         ids=["one size", "multi-crop"])
def test_batches_match_the_other_backends_layout(beton, crops, sizes):
    batches = list(make(beton, views=len(sizes), crops=crops))
    assert len(batches) == N // B
    for b in batches:
        assert len(b.views) == len(sizes) and b.index.dtype == b.labels.dtype == torch.int64
        for v, size in zip(b.views, sizes):
            assert v.shape == (B, 3, size, size) and v.dtype == torch.float32
            assert v.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(b.labels, b.index % CLASSES)
        # Views of one image are independent draws: they differ, with one label per row.
        assert ((b.views[0] - b.views[1]).flatten(1).abs().amax(1) > 0).all()


def test_identity_views_round_trip_every_index_once_across_two_shards(beton):
    seen = []
    for rank in (0, 1):
        for b in make(beton, rank, 2, identity=True, views=3):
            for v in b.views:
                assert torch.equal(pixel_index(v), b.index)
                assert torch.equal(v, b.views[0])          # no augmentation: all views equal
            seen += b.index.tolist()
    assert sorted(seen) == list(range(N))


def test_shards_are_slices_of_the_single_rank_batches(beton):
    whole, r0, r1 = list(make(beton)), list(make(beton, 0, 2)), list(make(beton, 1, 2))
    for w, a, b in zip(whole, r0, r1, strict=True):
        assert torch.equal(torch.cat([a.index, b.index]), w.index)
        assert all(torch.equal(torch.cat([va, vb]), v) for v, va, vb in zip(w.views, a.views, b.views))


def test_seed_epoch_and_threads(beton):
    first = list(make(beton, seed=3))
    assert same(first, list(make(beton, seed=3, workers=2)))      # decode threads change nothing
    assert not torch.equal(list(make(beton, seed=4))[0].index, first[0].index)
    loader = make(beton, seed=3)
    loader.set_epoch(1)
    assert not same(list(loader), first)


def test_resume_mid_epoch_and_abandoned_iteration(beton):
    reference = make(beton)
    expected = list(reference) + list(reference)                   # epochs 0 and 1
    interrupted = make(beton)
    taken = [next(iter(interrupted))]
    state = interrupted.state_dict()
    assert state == {"epoch": 0, "batch": 1, "seed": 0}
    resumed = make(beton, seed=7)                                  # the checkpoint's seed wins
    resumed.load_state_dict(state)
    assert same(taken + list(resumed) + list(resumed), expected)
    assert reference.state_dict() == {"epoch": 2, "batch": 0, "seed": 0}


def test_global_rng_untouched(beton):
    torch.manual_seed(1)
    state = torch.get_rng_state()
    list(make(beton))
    assert torch.equal(torch.get_rng_state(), state)


def test_jpeg_file_with_mixed_sizes(tmp_path):
    """JPEG storage, images of three sizes: every crop resized to S, labels kept, crops seeded."""
    sizes = [(20, 30), (16, 16), (40, 12)]
    images = [np.full((h, w, 3), (i * 2, 100, 200), np.uint8) for i, (h, w) in enumerate(sizes * 32)]

    class Mixed:
        labels = np.arange(len(images)) % 3

        def __len__(self):
            return len(images)

        def load_pil(self, i):
            return Image.fromarray(images[i])

    path = convert(Mixed(), tmp_path / "mixed.beton", jpeg_quality=95, max_res=32, workers=1).path
    file = BetonFile(path)
    assert (file.mode == 0).all()
    assert file.height.tolist()[:3] == [20, 16, 32] and file.width.tolist()[:3] == [30, 16, 9]  # 40x12 -> 32x9
    a, b = list(make(path, data=Mixed())), list(make(path, data=Mixed()))
    assert same(a, b)
    flat = make(path, data=Mixed(), identity=True)
    for batch in flat:
        red = pixel_index(batch.views[0]) % 256                     # flat images: the crop keeps the colour
        assert (red - 2 * batch.index).abs().max() <= 2             # JPEG at quality 95
        assert torch.equal(batch.labels, batch.index % 3)


def test_bad_files_and_settings_are_named(beton, tmp_path):
    with pytest.raises(DataError, match="does not exist.*fastssl data convert"):
        BetonFile(tmp_path / "none.beton")
    (tmp_path / "junk.beton").write_bytes(b"not a beton at all")
    with pytest.raises(DataError, match="not a readable .beton"):
        BetonFile(tmp_path / "junk.beton")
    other = ArrayDataset(DATA.images, (DATA.labels + 1) % CLASSES)
    with pytest.raises(DataError, match="labels differ from the configured dataset"):
        make(beton, data=other)
    with pytest.raises(ConfigError, match="loader.beton=None: must be an existing .beton"):
        load_config(None, ["loader.backend=ffcv"])
    cfg = load_config(None, ["loader.backend=ffcv", f"loader.beton={beton}"])
    assert cfg.loader.beton == str(beton)


def test_per_view_blur_and_half_precision_views(beton):
    """blur_p = [1, 0]: view 0 blurred, view 1 exactly the unblurred run's; bf16 views are the fp32 ones rounded."""
    def first_batch(blur_p, dtype=torch.float32):
        cfg = Config()
        cfg.data.image_size = S
        cfg.loader.backend, cfg.loader.beton, cfg.loader.batch_size, cfg.loader.workers = "ffcv", str(beton), B, 0
        cfg.augment.blur_p, cfg.augment.blur_kernel_frac = blur_p, 0.3
        return next(iter(build_train_loader(cfg.load_settings(), DATA, "cpu", out_dtype=dtype)))

    plain, blurred, half = first_batch([0.0]), first_batch([1.0, 0.0]), first_batch([1.0, 0.0], torch.bfloat16)
    assert torch.equal(blurred.views[1], plain.views[1])
    assert (blurred.views[0] - plain.views[0]).abs().max() > 0.1
    # A blur keeps each channel's mean (up to the reflected border): the blue gradient's mean survives.
    torch.testing.assert_close(blurred.views[0].mean((2, 3)), plain.views[0].mean((2, 3)), atol=0.05, rtol=0)
    for v_half, v_full in zip(half.views, blurred.views):
        assert v_half.dtype == torch.bfloat16 and v_half.is_contiguous(memory_format=torch.channels_last)
        assert ((v_half.float() - v_full).abs() <= torch.finfo(torch.bfloat16).eps * v_full.abs().clamp(min=1)).all()


def test_importing_the_backend_leaves_torchs_thread_count_alone():
    """ffcv's package import sets torch to 1 thread; a run that imported it computed differently."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2); import fastssl.loaders.ffcv_backend, fastssl.loaders.convert; "
            "from fastssl import envinfo; envinfo.collect(); print(torch.get_num_threads())")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "2"
