"""The `dali` backend on DALI's CPU operators: the shared Loader contract, and bad data: settled when
the dataset is built where its header shows it, by data.on_error where DALI's decoder meets it."""
import dataclasses
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.config import AugmentConfig, LoaderConfig
from fastssl.loaders.augment import IMAGENET_MEAN, IMAGENET_STD
from fastssl.loaders.datasets import ArrayDataset, DataError, ImageFolderDataset
from fastssl.loaders.datasets.imagefolder import decode
from fastssl.loaders.settings import CropGroup

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install -e '.[dali]')")
from fastssl.loaders.dali_backend import DaliLoader  # noqa: E402

N, SIDE, BATCH = 24, 12, 8
PLAIN = AugmentConfig(crop_scale_min=1.0, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)


def index_folder(root, n=N):
    """Image i is flat colour (i, 255 - i, 7 * i mod 256) as a lossless PNG, of one of 12 sizes (crop
    boxes are drawn per size); files sort in i order."""
    for i in range(n):
        folder = root / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = np.array([i, 255 - i, 7 * i % 256], np.uint8)
        Image.fromarray(np.tile(colour, (SIDE + i % 4, SIDE + i % 3, 1))).save(folder / f"{i:03d}.png")
    return ImageFolderDataset(root)


def loader(dataset, augment=PLAIN, seed=0, rank=0, world=1, views=2, batch=BATCH, size=SIDE):
    return DaliLoader(dataset, LoaderConfig(backend="dali", batch_size=batch, views=views, workers=1),
                      augment, size, "cpu", seed, rank, world)


def pixels(view: torch.Tensor) -> torch.Tensor:
    """Normalised float views back to 0..255 pixel values (B, 3, S, S)."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (view * std + mean) * 255


def batches(ld):
    return [(b.views, b.labels, b.index) for b in ld]


def test_index_round_trip_every_sample_once_across_two_shards(tmp_path):
    ds = index_folder(tmp_path)
    order = {i: ds.paths.index(tmp_path / f"class{i % 3}" / f"{i:03d}.png") for i in range(N)}
    for epoch in (0, 1):
        seen = []
        for rank in (0, 1):
            ld = loader(ds, rank=rank, world=2)
            ld.set_epoch(epoch)
            for b in ld:
                assert b.views[0].shape == (BATCH // 2, 3, SIDE, SIDE) and b.views[0].dtype == torch.float32
                assert all(v.is_contiguous(memory_format=torch.channels_last) for v in b.views)
                for view in b.views:
                    colour = pixels(view).mean((2, 3)).round().long()      # (B, 3): flat images
                    number = colour[:, 0]
                    assert torch.equal(colour[:, 1], 255 - number)
                    assert b.index.tolist() == [order[k] for k in number.tolist()]
                assert torch.equal(b.labels, torch.as_tensor(ds.labels)[b.index])
                seen += b.index.tolist()
        assert sorted(seen) == list(range(N))                              # each exactly once, N % 8 == 0


def test_two_views_differ_same_label_and_shards_match_one_process(tmp_path):
    ds = ArrayDataset(np.random.default_rng(0).integers(0, 256, (N, SIDE, SIDE, 3), dtype=np.uint8),
                      np.arange(N) % 4)
    whole = next(iter(loader(ds, AugmentConfig(), views=3)))
    for a in range(3):
        for b in range(a + 1, 3):
            assert (whole.views[a] - whole.views[b]).abs().amax((1, 2, 3)).min() > 0.1
    assert torch.equal(whole.labels, torch.as_tensor(ds.labels)[whole.index])
    halves = [next(iter(loader(ds, AugmentConfig(), views=3, rank=r, world=2))) for r in (0, 1)]
    assert torch.equal(torch.cat([h.index for h in halves]), whole.index)
    for v in range(3):   # an image's augmentation does not depend on the world size
        torch.testing.assert_close(torch.cat([h.views[v] for h in halves]), whole.views[v])


def test_same_seed_same_batches_other_seed_differs(tmp_path):
    ds = index_folder(tmp_path)
    first, again = batches(loader(ds, AugmentConfig(), seed=3)), batches(loader(ds, AugmentConfig(), seed=3))
    other = batches(loader(ds, AugmentConfig(), seed=4))
    assert len(first) == N // BATCH
    for (v1, l1, i1), (v2, l2, i2) in zip(first, again):
        assert torch.equal(i1, i2) and torch.equal(l1, l2) and all(map(torch.equal, v1, v2))
    assert not all(torch.equal(a[2], b[2]) for a, b in zip(first, other))


def test_state_dict_resumes_mid_epoch_exactly(tmp_path):
    ds = index_folder(tmp_path)
    ld = loader(ds, AugmentConfig(), seed=5)
    ld.set_epoch(1)
    reference = batches(ld)
    assert ld.state_dict() == {"epoch": 2, "batch": 0, "seed": 5}

    partial = loader(ds, AugmentConfig(), seed=99)
    partial.set_epoch(1)
    it = iter(partial)
    next(it)
    state = partial.state_dict()
    assert state["batch"] == 1
    resumed = loader(ds, AugmentConfig(), seed=0)
    resumed.load_state_dict({**state, "seed": 5})
    rest = batches(resumed)
    assert len(rest) == len(reference) - 1
    for (v1, _, i1), (v2, _, i2) in zip(reference[1:], rest):
        assert torch.equal(i1, i2) and all(map(torch.equal, v1, v2))
    partial.load_state_dict({"epoch": 1, "batch": 2, "seed": 5})   # the same loader, moved: rebuilt there
    (v, _, i), = batches(partial)
    assert torch.equal(i, reference[2][2]) and all(map(torch.equal, v, reference[2][0]))


def test_odd_images_decode_to_the_rgb_pil_gives(bad_folder):
    good = bad_folder["root"].parent / "good" / "x"   # just these, so identity crops show the decoded pixels
    good.mkdir(parents=True)
    for path in bad_folder["convertible"]:
        (good / path.name).write_bytes(path.read_bytes())
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    rgb.save(good / "bmp.bmp")
    rgb.save(good / "webp.webp", lossless=True)
    rgb.convert("1").save(good / "bilevel.png")
    rgb.convert("P").save(good / "palette.png")
    Image.fromarray(np.asarray(rgb)[..., 0].astype(np.uint16) * 257).save(good / "gray16.png")
    ds = ImageFolderDataset(good.parent)
    b = next(iter(loader(ds, batch=len(ds), size=8)))
    for view in b.views:
        for row, i in enumerate(b.index.tolist()):
            expected = torch.from_numpy(np.array(decode(ds.paths[i]))).permute(2, 0, 1).float()
            diff = (pixels(view[row]) - expected).abs()
            assert diff.mean() < 1.5 and diff.max() <= 12, ds.paths[i]   # JPEG decoders may round apart


def test_header_bad_files_are_settled_when_the_dataset_is_built(bad_folder, caplog):
    """Zero bytes, text and a JPEG cut inside its header never reach DALI: the dataset names one (raise)
    or drops them all (skip), and the loader serves every good file."""
    shutil.rmtree(bad_folder["empty"])   # an empty class is refused by the ImageFolder reader itself
    with pytest.raises(DataError, match="cannot be decoded") as err:
        ImageFolderDataset(bad_folder["root"])
    assert any(str(p) in str(err.value) for p in bad_folder["bad"])
    ds = ImageFolderDataset(bad_folder["root"], on_error="skip")
    assert "skipped 3 file(s)" in caplog.text
    seen = [i for b in loader(ds, batch=2) for i in b.index.tolist()]
    assert sorted(ds.paths[i] for i in seen) == sorted(set(ds.paths) - set(bad_folder["bad"]))
    assert len(seen) == bad_folder["images"]


def test_links_that_lead_to_no_file_are_settled_when_the_dataset_is_built(tmp_path, broken_links,
                                                                         broken_link_reasons):
    index_folder(tmp_path)
    links = broken_links(tmp_path / "class0")
    with pytest.raises(DataError, match="cannot be decoded") as err:
        ImageFolderDataset(tmp_path)
    assert str(err.value).startswith(f"image file {str(links[0])!r}: cannot be decoded ({broken_link_reasons[0]})")
    ds = ImageFolderDataset(tmp_path, on_error="skip")
    assert ds.skipped == list(zip(links, broken_link_reasons)) and len(ds) == N
    seen = []
    for b in loader(ds):
        number = pixels(b.views[0]).mean((2, 3)).round().long()[:, 0]      # flat images: R is the number
        assert [ds.paths[i].name for i in b.index.tolist()] == [f"{k:03d}.png" for k in number.tolist()]
        seen += b.index.tolist()
    assert sorted(seen) == list(range(N))


def folder_with_pixel_bad_file(root, cut_jpeg):
    """index_folder's first N - 1 images and class0/bad.jpg, pixel-truncated: the last file of class 0
    (dataset index 8), so its substitute under skip is class1/001.png, of another label and size."""
    index_folder(root, N - 1)
    bad = root / "class0" / "bad.jpg"
    bad.write_bytes(cut_jpeg)
    with Image.open(bad) as image, pytest.raises(OSError):
        assert image.size == (64, 64)
        image.load()
    return bad


SEED = 3   # puts the bad file in the last batch of epoch 0: batches come out before DALI meets it


def test_a_pixel_bad_file_met_mid_run_raises_naming_it(tmp_path, cut_jpeg):
    bad = folder_with_pixel_bad_file(tmp_path, cut_jpeg)
    ds = ImageFolderDataset(tmp_path)
    ld = loader(ds, seed=SEED)
    assert ds.paths.index(bad) in ld.sampler.indices(0, 2)
    with pytest.raises(DataError, match="cannot be decoded") as err:
        batches(ld)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value.__context__, RuntimeError)   # DALI's error, not shown but kept
    assert ld.state_dict() == {"epoch": 0, "batch": 2, "seed": SEED}   # two batches came out first
    with pytest.raises(DataError, match="cannot be decoded"):  # iterated again: rebuilt, not left broken
        batches(ld)


def test_a_pixel_bad_file_met_mid_run_is_replaced_as_if_known_from_the_start(tmp_path, caplog, cut_jpeg):
    """Under skip the next good file takes the bad one's place (its bytes, size, index and label), and the
    batches are those of a folder where the bad file held the substitute's bytes from the start."""
    bad = folder_with_pixel_bad_file(tmp_path / "met", cut_jpeg)
    ds = ImageFolderDataset(tmp_path / "met", on_error="skip")
    position = ds.paths.index(bad)
    substitute = position + 1
    assert ds.labels[substitute] != ds.labels[position] and ds.sizes[substitute].tolist() != [64, 64]
    ld = loader(ds, AugmentConfig(), seed=SEED)
    with caplog.at_level(logging.WARNING):
        met = batches(ld) + batches(ld)                        # epochs 0 and 1
    assert len([r for r in caplog.records if str(bad) in r.getMessage()]) == 1

    known = tmp_path / "known"
    shutil.copytree(tmp_path / "met", known)
    shutil.copy(ds.paths[substitute], known / bad.relative_to(tmp_path / "met"))
    reference = loader(ImageFolderDataset(known), AugmentConfig(), seed=SEED)
    expected = batches(reference) + batches(reference)
    assert len(met) == len(expected) == 2 * N // BATCH
    for k, ((views, labels, index), (ref_views, _, ref_index)) in enumerate(zip(met, expected)):
        drawn = ld.sampler.indices(k // len(ld), k % len(ld))
        assert torch.equal(index, torch.where(drawn == position, substitute, drawn))
        assert torch.equal(ref_index, drawn)
        assert torch.equal(labels, torch.as_tensor(ds.labels)[index])
        assert all(map(torch.equal, views, ref_views))
    for epoch in (met[:len(ld)], met[len(ld):]):
        seen = {i for _, _, index in epoch for i in index.tolist()}
        assert seen == set(range(len(ds))) - {position}


def test_a_file_dali_cannot_decode_but_pil_can_is_a_data_error_listing_the_files(tmp_path, monkeypatch, cut_jpeg):
    folder_with_pixel_bad_file(tmp_path, cut_jpeg)
    ds = ImageFolderDataset(tmp_path, on_error="skip")
    monkeypatch.setattr(ds, "load_pil", lambda index: Image.new("RGB", (1, 1)))   # PIL decodes everything
    with pytest.raises(DataError, match="DALI could not decode a file that PIL can") as err:
        batches(loader(ds, seed=SEED))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value.__cause__, RuntimeError)


def test_empty_class_folder_is_an_error(bad_folder):
    with pytest.raises(DataError, match="holds no image files"):
        ImageFolderDataset(bad_folder["root"], on_error="skip")


# Multi-crop: 2 global views at 16 px and 2 local views at 8 px, each group with its own crop scale.
CROPS = [CropGroup(2, 16, [0.3, 1.0]), CropGroup(2, 8, [0.05, 0.3])]


@pytest.mark.parametrize("crops, sizes", [(None, [16, 16]), (CROPS, [16, 16, 8, 8])], ids=["one size", "multi-crop"])
def test_crops_and_flips_match_the_shared_augmentation(crops, sizes):
    """The boxes and flips the backend feeds DALI, each view resized to its own side, give the pixels
    augment.apply_params gives at that side: within one 0..255 level inside the view. On its outermost
    rows and columns DALI's linear filter also weighs the pixels just outside the box, which augment's
    (torchvision's) leaves out: there the views differ by up to 0.6 normalised (about 10 levels) for the
    16 px views and 1.0 (17 levels; measured 0.77) for the 8 px local views, whose few-pixel boxes are
    enlarged; 0.02 on average (measured 0.014 at most)."""
    from fastssl.loaders.augment import apply_params, sample_params
    from fastssl.loaders.sampler import cpu_generator

    height, width = 20, 30
    y, x = np.mgrid[0:height, 0:width]
    images = np.stack([np.stack([x * 8, y * 12, (x * y) % 256], -1).astype(np.uint8)] * BATCH)
    cfg = AugmentConfig(crop_scale_min=0.3, flip_p=0.5, jitter_p=0.0, grayscale_p=0.0, crops=crops)
    b = next(iter(loader(ArrayDataset(images, np.zeros(BATCH)), cfg, seed=1, size=16, views=len(sizes))))
    assert [v.shape[-1] for v in b.views] == sizes
    level = 1 / 255 / min(IMAGENET_STD)                   # one 0..255 level in normalised units
    for v, (view, size) in enumerate(zip(b.views, sizes)):
        params = sample_params(BATCH, height, width, cfg, cpu_generator("dali-view", 1, 0, 0, v), v)
        diff = (apply_params(torch.from_numpy(images), params, size) - view).abs()
        assert diff[:, :, 1:-1, 1:-1].amax() < level and diff.mean() < 0.02
        assert diff.amax() < (0.6 if size == 16 else 1.0)


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [AugmentConfig(), AugmentConfig(blur_p=[1.0, 0.5], solarize_p=[0.0, 0.5])])
def test_gpu_pipeline_matches_cpu_operators(tmp_path, cfg):
    """nvJPEG / the "mixed" decoder and GPU operators (blur and solarize split per sample too) give the
    CPU operators' batches (PNG: lossless)."""
    ds = index_folder(tmp_path)
    cpu = batches(loader(ds, cfg, seed=2))
    gpu = DaliLoader(ds, LoaderConfig(backend="dali", batch_size=BATCH, workers=1), cfg, SIDE, "cuda", 2)
    for (v1, l1, i1), b in zip(cpu, gpu):
        assert b.views[0].is_cuda and b.views[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(i1, b.index.cpu()) and torch.equal(l1, b.labels.cpu())
        for a, g in zip(v1, b.views):
            assert (a - g.cpu()).abs().mean() < 0.02


@pytest.mark.gpu
def test_gpu_decoder_on_full_size_photos_matches_cpu_operators(tmp_path):
    """nvJPEG (hardware and CUDA decoders) on photo-sized JPEGs, the files the DALI throughput run reads,
    gives the CPU decoder's views up to the decoders' rounding."""
    from fastssl.loaders.datasets.photos import write_photo_folder

    write_photo_folder(tmp_path, train=2 * BATCH, classes=2)
    ds = ImageFolderDataset(tmp_path / "train")
    cpu = batches(loader(ds, AugmentConfig(), seed=4, size=224))
    gpu = DaliLoader(ds, LoaderConfig(backend="dali", batch_size=BATCH, workers=2), AugmentConfig(), 224, "cuda", 4)
    for (v1, l1, i1), b in zip(cpu, gpu, strict=True):
        assert torch.equal(i1, b.index.cpu()) and torch.equal(l1, b.labels.cpu())
        for a, g in zip(v1, b.views):
            assert (a - g.cpu()).abs().mean() < 0.03


@pytest.mark.parametrize("key, value", [("loader.prefetch", 0), ("loader.hw_decoder_load", 1.5)])
def test_dali_settings_are_validated(key, value):
    from fastssl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=key):
        load_config(None, ["loader.backend=dali", f"{key}={value}"])


def test_a_forked_child_never_runs_dalis_destructor():
    """A pipeline left to the garbage collector, collected in a forked DataLoader worker, must not
    hang it (DALI's destructor waits for threads that only exist in the parent)."""
    import gc
    import os
    import signal
    import time

    ds = ArrayDataset(np.zeros((BATCH, SIDE, SIDE, 3), np.uint8), np.zeros(BATCH))
    gc.disable()
    try:
        ld = loader(ds)
        next(iter(ld))
        ld.cycle = ld                 # cyclic garbage that holds a running pipeline
        del ld
        pid = os.fork()
        if pid == 0:
            gc.collect()
            os._exit(0)
    finally:
        gc.enable()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung collecting a DALI pipeline")


# BYOL's asymmetric recipe, jitter off (DALI's colour order differs from augment's) and identity crops (so
# both sides see the same pixels), view 1's probabilities raised so that 8 images show both outcomes and
# sigma kept large enough for every blur to show.
BYOL_LIKE = AugmentConfig(crop_scale_min=1.0, flip_p=0.5, jitter_p=0.0, grayscale_p=0.0, blur_p=[1.0, 0.5],
                          solarize_p=[0.0, 0.5], blur_sigma_min=1.0, blur_kernel_frac=0.3,
                          solarize_threshold=0.6)


def noise_images(n=BATCH, side=SIDE):
    return np.random.default_rng(3).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def test_blur_and_solarize_per_view_match_the_shared_augmentation():
    """Each view blurs and solarizes the images its own probabilities pick, as augment.apply_params does
    with the same parameters: within one 0..255 level, as DALI rounds to uint8 after the blur. Where
    that rounding moves a blurred value across the threshold (within half a level of it), solarize may
    go the other way: those few pixels are left out."""
    from fastssl.loaders.augment import apply_params, sample_params
    from fastssl.loaders.sampler import cpu_generator

    b = next(iter(loader(ArrayDataset(noise_images(), np.zeros(BATCH)), BYOL_LIKE, seed=7)))
    images = torch.from_numpy(noise_images())[b.index]          # the batch, in the sampler's order
    level, no = 1 / 255 / min(IMAGENET_STD), torch.zeros(BATCH, dtype=torch.bool)
    for v, view in enumerate(b.views):
        params = sample_params(BATCH, SIDE, SIDE, BYOL_LIKE, cpu_generator("dali-view", 7, 0, 0, v), v)
        blurred, solarized = params.blur_sigma > 0, params.solarize
        if v == 0:
            assert blurred.all() and not solarized.any()
        else:   # the seed gives both outcomes of both coins, so the selection itself is checked
            assert 0 < int(blurred.sum()) < BATCH and 0 < int(solarized.sum()) < BATCH
        expected = apply_params(images, params, SIDE)
        before = pixels(apply_params(images, dataclasses.replace(params, solarize=no), SIDE))
        ambiguous = solarized[:, None, None, None] & ((before - 255 * BYOL_LIKE.solarize_threshold).abs() <= 0.5)
        assert ((view - expected).abs() < 1.01 * level).logical_or(ambiguous).all()
        assert ambiguous.float().mean() < 0.01
        plain = apply_params(images, dataclasses.replace(params, blur_sigma=torch.zeros(BATCH), solarize=no), SIDE)
        changed = (expected - plain).abs().amax((1, 2, 3)) > 10 * level      # the images blur/solarize altered
        assert torch.equal(changed, blurred | solarized)


def test_local_views_blur_with_the_window_of_their_own_side():
    """Multi-crop on 8 px images: the 8 px local view (an identity resize, so no filter differs) is blurred
    with the window of 8 px (3 at blur_kernel_frac 0.3), not the 12 px global view's (5): within one level of
    augment.apply_params, and every image at least 10 levels away from the 5 px window's blur."""
    from fastssl.loaders.augment import apply_params, blur_window, sample_params
    from fastssl.loaders.sampler import cpu_generator

    cfg = AugmentConfig(crop_scale_min=1.0, flip_p=0.5, jitter_p=0.0, grayscale_p=0.0, blur_p=[1.0],
                        blur_sigma_min=1.0, blur_kernel_frac=0.3,
                        crops=[CropGroup(1, 12, [1.0, 1.0]), CropGroup(1, 8, [1.0, 1.0])])
    images = noise_images(side=8)
    b = next(iter(loader(ArrayDataset(images, np.zeros(BATCH)), cfg, seed=7, size=12)))
    assert [v.shape[-1] for v in b.views] == [12, 8]
    assert (blur_window(8, 0.3), blur_window(12, 0.3), blur_window(8, 0.6)) == (3, 5, 5)
    params = sample_params(BATCH, 8, 8, cfg, cpu_generator("dali-view", 7, 0, 0, 1), 1)
    images = torch.from_numpy(images)[b.index]
    level = 1 / 255 / min(IMAGENET_STD)
    assert ((b.views[1] - apply_params(images, params, 8)).abs() < level).all()
    wider = apply_params(images, dataclasses.replace(params, blur_frac=0.6), 8)      # the 5 px window
    assert ((b.views[1] - wider).abs().amax((1, 2, 3)) > 10 * level).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_views_come_out_in_the_requested_dtype(dtype):
    """float16 from crop_mirror_normalize, bfloat16 cast from float32: the float32 views to that precision."""
    ds = ArrayDataset(noise_images(), np.zeros(BATCH))
    reference = next(iter(loader(ds, BYOL_LIKE, seed=1))).views
    views = next(iter(DaliLoader(ds, LoaderConfig(backend="dali", batch_size=BATCH, workers=1), BYOL_LIKE,
                                 SIDE, "cpu", 1, out_dtype=dtype))).views
    for view, ref in zip(views, reference):
        assert view.dtype == dtype and view.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(view.float(), ref, rtol=torch.finfo(dtype).eps, atol=1e-3)


def test_an_unsupported_dtype_is_refused():
    with pytest.raises(ValueError, match="float64"):
        DaliLoader(ArrayDataset(noise_images(), np.zeros(BATCH)), LoaderConfig(backend="dali", batch_size=BATCH),
                   PLAIN, SIDE, "cpu", 0, out_dtype=torch.float64)
