"""Dataset readers: generated files with known pixels, every bad-input rule, and the real data when present."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import logging
import pickle
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.config import Config, DataConfig
from fastssl.loaders.datasets import DataError, ImageFolderDataset, build_dataset, load_cifar
from fastssl.loaders.datasets import cifar
from fastssl.config import FASHION_MNIST_DEFAULT as DEFAULT_ROOT
from fastssl.loaders.datasets.fashion_mnist import CLASSES as FASHION_CLASSES, load_fashion_mnist
from fastssl.loaders.augment import IMAGENET_MEAN, IMAGENET_STD
from fastssl.loaders.factory import build_train_loader

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SIDE = 6


# ---------------------------------------------------------------- ImageFolder

def encoded(label: int, k: int) -> np.ndarray:
    """A SIDE x SIDE image whose pixels name it: R = its number in its class, G = its label, B = position."""
    image = np.zeros((SIDE, SIDE, 3), dtype=np.uint8)
    image[..., 0] = k
    image[..., 1] = label
    image[..., 2] = np.arange(SIDE * SIDE).reshape(SIDE, SIDE)
    return image


def save(path: Path, image, fmt: str = "PNG", **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(path, fmt, **kw)
    return path


def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 90, dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_imagefolder_sorted_classes_files_and_exact_pixels(tmp_path):
    # Folders created out of sorted order, extensions in mixed case, lossless formats so pixels are exact;
    # non-image and hidden entries are ignored.
    save(tmp_path / "zebra" / "a.png", encoded(2, 1))
    save(tmp_path / "zebra" / "Z.PNG", encoded(2, 0))  # byte order, as torchvision sorts: "Z" < "a"
    save(tmp_path / "apple" / "x.bmp", encoded(0, 0), "BMP")
    save(tmp_path / "mango" / "2.webp", encoded(1, 1), "WEBP", lossless=True)
    save(tmp_path / "mango" / "1.Png", encoded(1, 0))
    (tmp_path / "mango" / "notes.txt").write_text("not data")
    (tmp_path / "mango" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / ".ipynb_checkpoints").mkdir()

    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["apple", "mango", "zebra"]
    assert [p.name for p in ds.paths] == ["x.bmp", "1.Png", "2.webp", "Z.PNG", "a.png"]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 1, 2, 2]
    expected = np.stack([encoded(0, 0), encoded(1, 0), encoded(1, 1), encoded(2, 0), encoded(2, 1)])
    array = ds.to_array(SIDE)
    assert array.dtype == np.uint8 and np.array_equal(array, expected)
    for i in range(len(ds)):
        image = ds.load_pil(i)
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), expected[i])
    assert ds.skipped == []


def test_imagefolder_to_array_resizes_to_square(tmp_path):
    # Bilinear resizing of a flat colour keeps the colour, whatever the aspect ratio.
    save(tmp_path / "a" / "wide.png", np.full((5, 11, 3), (10, 120, 250), dtype=np.uint8))
    save(tmp_path / "b" / "tall.png", np.full((9, 3, 3), (7, 8, 9), dtype=np.uint8))
    array = ImageFolderDataset(tmp_path).to_array(4)
    assert array.shape == (2, 4, 4, 3)
    assert (array[0] == (10, 120, 250)).all() and (array[1] == (7, 8, 9)).all()


def cmyk_to_rgb(c: int, m: int, y: int, k: int) -> tuple[int, int, int]:
    # Each ink removes its share of the light the black ink left: R = (255 - C)(255 - K) / 255.
    return tuple(round((255 - v) * (255 - k) / 255) for v in (c, m, y))


def palette_image() -> Image.Image:
    image = Image.new("P", (3, 3), 2)
    image.putpalette([0, 0, 0, 255, 0, 0, 11, 22, 33] + [0] * (3 * 253))
    return image


MODES = {  # case: (image, save format, file name, expected RGB of every pixel)
    "gray": (Image.new("L", (3, 3), 77), "PNG", "g.png", (77, 77, 77)),
    "bilevel": (Image.new("1", (3, 3), 1), "PNG", "b.png", (255, 255, 255)),
    "gray16": (Image.new("I;16", (3, 3), 4000), "PNG", "g16.png", (round(4000 / 257),) * 3),
    "gray_alpha": (Image.new("LA", (3, 3), (60, 0)), "PNG", "la.png", (60, 60, 60)),
    "rgba_alpha_dropped": (Image.new("RGBA", (3, 3), (10, 20, 30, 0)), "PNG", "a.png", (10, 20, 30)),
    "palette": (palette_image(), "PNG", "p.png", (11, 22, 33)),
    "cmyk_jpeg": (Image.new("CMYK", (8, 8), (10, 200, 30, 40)), "JPEG", "c.jpg", cmyk_to_rgb(10, 200, 30, 40)),
    "png_named_jpg": (Image.new("RGB", (3, 3), (1, 2, 3)), "PNG", "really_png.jpg", (1, 2, 3)),
}


@pytest.mark.parametrize("case", MODES)
def test_imagefolder_converts_every_mode_to_rgb(tmp_path, case):
    image, fmt, name, rgb = MODES[case]
    save(tmp_path / "only" / name, image, fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    ds = ImageFolderDataset(tmp_path)
    got = ds.load_pil(0)
    assert got.mode == "RGB"
    assert (np.asarray(got) == rgb).all(), (case, np.asarray(got)[0, 0], rgb)
    assert (ds.to_array(3) == rgb).all()


def write_bad(path: Path, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"truncated": jpeg_bytes()[:300], "zero_bytes": b"", "text": b"hello, not an image\n"}[kind]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["truncated", "zero_bytes", "text"])
def test_imagefolder_header_bad_file_raises_at_construction_naming_it(tmp_path, kind):
    save(tmp_path / "a" / "0.png", encoded(0, 0))
    bad = write_bad(tmp_path / "a" / "1.jpg", kind)
    save(tmp_path / "b" / "0.png", encoded(1, 0))
    with pytest.raises(DataError, match="cannot be decoded") as err:
        ImageFolderDataset(tmp_path)  # raise is the default; the index's header read finds it
    assert str(bad) in str(err.value) and f"fastssl data check {tmp_path}" in str(err.value)


def test_imagefolder_pixel_bad_file_raises_where_decoded_and_is_then_known_at_start(tmp_path, cut_jpeg):
    save(tmp_path / "a" / "0.png", encoded(0, 0))
    bad = tmp_path / "a" / "1.jpg"
    bad.write_bytes(cut_jpeg)
    save(tmp_path / "b" / "0.png", encoded(1, 0))
    assert Image.open(bad).size == (64, 64)
    ds = ImageFolderDataset(tmp_path)
    assert len(ds) == 3 and ds.sizes.tolist() == [[SIDE, SIDE], [64, 64], [SIDE, SIDE]]
    for call in (lambda: ds.load_pil(1), lambda: ds.load_usable(1), ds.check, lambda: ds.to_array(SIDE)):
        with pytest.raises(DataError, match="cannot be decoded") as err:
            call()
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert np.array_equal(np.asarray(ds.load_pil(2)), encoded(1, 0))
    with pytest.raises(DataError, match="cannot be decoded"):   # the decode pass recorded it in the index
        ImageFolderDataset(tmp_path)
    assert ImageFolderDataset(tmp_path, on_error="skip").labels.tolist() == [0, 1]


def test_imagefolder_skip_substitutes_the_next_good_file_mid_run(tmp_path, caplog, cut_jpeg):
    save(tmp_path / "a" / "0.png", encoded(0, 0))
    bad = tmp_path / "a" / "1.jpg"
    bad.write_bytes(cut_jpeg)
    save(tmp_path / "b" / "0.png", encoded(1, 0))
    ds = ImageFolderDataset(tmp_path, on_error="skip")
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            image, index = ds.load_usable(1)
            assert index == 2 and np.array_equal(np.asarray(image), encoded(1, 0))
    named = [r for r in caplog.records if str(bad) in r.getMessage()]
    assert len(named) == 1 and "fastssl data check" in named[0].getMessage()   # once per file
    assert ds.load_usable(0)[1] == 0 and len(ds) == 3   # nothing dropped mid-epoch


def make_tree_with_bad_files(root: Path) -> list[Path]:
    save(root / "a" / "0.png", encoded(0, 0))
    bad = [write_bad(root / "a" / "1.jpg", "truncated")]
    save(root / "a" / "2.png", encoded(0, 2))
    bad.append(write_bad(root / "b" / "0.jpg", "zero_bytes"))
    save(root / "b" / "1.png", encoded(1, 1))
    save(root / "c" / "0.png", encoded(2, 0))
    bad.append(write_bad(root / "c" / "1.jpeg", "text"))
    return bad


def test_imagefolder_skip_drops_counts_and_logs_once(tmp_path, caplog):
    bad = make_tree_with_bad_files(tmp_path)
    ds = ImageFolderDataset(tmp_path, on_error="skip")
    with caplog.at_level(logging.WARNING):
        array = ds.to_array(SIDE)
    assert [p for p, _ in ds.skipped] == bad
    assert all(reason for _, reason in ds.skipped)
    assert ds.labels.tolist() == [0, 0, 1, 2] and len(ds) == 4
    assert [p.name for p in ds.paths] == ["0.png", "2.png", "1.png", "0.png"]
    assert np.array_equal(array, np.stack([encoded(0, 0), encoded(0, 2), encoded(1, 1), encoded(2, 0)]))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 3 file(s)" in warnings[0].getMessage()


def test_imagefolder_check_fixes_the_mapping_before_reading(tmp_path, cut_jpeg):
    make_tree_with_bad_files(tmp_path)      # header-bad files: dropped at construction
    late = tmp_path / "c" / "2.jpg"         # pixel-bad: found by check()
    late.write_bytes(cut_jpeg)
    ds = ImageFolderDataset(tmp_path, on_error="skip")
    assert len(ds.skipped) == 3 and ds.labels.tolist() == [0, 0, 1, 2, 2]
    ds.check()
    assert len(ds.skipped) == 4 and ds.skipped[-1][0] == late and ds.labels.tolist() == [0, 0, 1, 2]
    assert [np.asarray(ds.load_pil(i))[0, 0, :2].tolist() for i in range(4)] == [[0, 0], [2, 0], [1, 1], [0, 2]]
    ds.check()  # nothing new to drop: the mapping stays
    assert len(ds.skipped) == 4 and len(ds) == 4


def test_imagefolder_skip_refuses_a_class_left_without_images(tmp_path):
    save(tmp_path / "a" / "0.png", encoded(0, 0))
    write_bad(tmp_path / "b" / "only.jpg", "text")
    with pytest.raises(DataError, match="none of its files can be decoded") as err:
        ImageFolderDataset(tmp_path, on_error="skip").check()
    assert str(tmp_path / "b") in str(err.value)


def splits_with_broken_links(root: Path, broken_links) -> tuple[Config, list[Path]]:
    """root/train and root/test with classes a and b of three images each, train/a also holding the three
    links of `broken_links`; the config of an unaugmented run over them, one batch per epoch."""
    for split in ("train", "test"):
        for label, name in enumerate("ab"):
            for k in range(3):
                save(root / split / name / f"{k}.png", encoded(label, k))
    cfg = Config()
    cfg.data.dataset, cfg.data.path, cfg.data.image_size = "imagefolder", str(root), SIDE
    cfg.loader.batch_size = 6
    a = cfg.augment
    a.crop_scale_min = a.crop_scale_max = 1.0
    a.flip_p = a.jitter_p = a.grayscale_p = 0.0
    return cfg, broken_links(root / "train" / "a")


def test_imagefolder_links_that_lead_to_no_file_raise_naming_the_first(tmp_path, broken_links, broken_link_reasons):
    cfg, links = splits_with_broken_links(tmp_path, broken_links)
    with pytest.raises(DataError) as err:
        build_dataset(cfg.data, "train")
    train = tmp_path / "train"
    assert str(err.value) == (f"image file {str(links[0])!r}: cannot be decoded ({broken_link_reasons[0]}); 2 more "
                              f"bad files in {str(train)!r} (data.on_error=skip drops and counts such files; "
                              f"`fastssl data check {train}` lists them all)")


@pytest.mark.parametrize("backend", ["tensor", "torchvision"])
def test_imagefolder_links_that_lead_to_no_file_are_skipped_and_counted(tmp_path, caplog, broken_links,
                                                                         broken_link_reasons, backend):
    cfg, links = splits_with_broken_links(tmp_path, broken_links)
    cfg.data.on_error, cfg.loader.backend = "skip", backend
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(cfg.data, "train")
    assert ds.skipped == list(zip(links, broken_link_reasons))
    assert [r.getMessage() for r in caplog.records] == [
        f"ImageFolder {tmp_path / 'train'}: skipped 3 file(s) that cannot be decoded (first: {links[0]}: "
        f"{broken_link_reasons[0]})"]
    batch, = list(build_train_loader(cfg.load_settings(), ds, "cpu"))
    assert sorted(batch.index.tolist()) == list(range(6))
    assert batch.labels.tolist() == ds.labels[batch.index.numpy()].tolist()
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for view in batch.views:
        for image, i in zip(view, batch.index.tolist()):
            pixels = torch.round((image.float() * std + mean) * 255).permute(1, 2, 0).to(torch.uint8).numpy()
            assert np.array_equal(pixels, np.asarray(Image.open(ds.paths[i]))), ds.paths[i]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_imagefolder_empty_class_folder_is_an_error(tmp_path, on_error):
    save(tmp_path / "a" / "0.png", encoded(0, 0))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    save(tmp_path / "c" / "0.png", encoded(2, 0))
    with pytest.raises(DataError, match="holds no image files") as err:
        ImageFolderDataset(tmp_path, on_error=on_error)
    assert str(tmp_path / "b") in str(err.value)


def test_imagefolder_bad_roots(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as err:
        ImageFolderDataset(missing)
    assert str(missing) in str(err.value)
    save(tmp_path / "flat" / "0.png", encoded(0, 0))
    with pytest.raises(DataError, match="has no class folders") as err:
        ImageFolderDataset(tmp_path / "flat")
    assert str(tmp_path / "flat") in str(err.value)
    with pytest.raises(DataError, match="is not a directory"):
        ImageFolderDataset(tmp_path / "flat" / "0.png")
    with pytest.raises(ValueError, match="on_error='ignore'"):
        ImageFolderDataset(tmp_path / "flat", on_error="ignore")


def test_imagefolder_real_cifar10_jpegs(cifar10_jpeg_root):
    train = ImageFolderDataset(cifar10_jpeg_root / "train")
    test = ImageFolderDataset(cifar10_jpeg_root / "test")
    assert train.classes == test.classes == CIFAR10_NAMES  # CIFAR-10's label order happens to be sorted
    assert len(train) == 20_000 and np.bincount(train.labels).tolist() == [2000] * 10
    assert len(test) == 10_000 and np.bincount(test.labels).tolist() == [1000] * 10
    start = time.perf_counter()
    arrays = train.to_array(32), test.to_array(32)
    seconds = time.perf_counter() - start
    print(f"\ndecoded {len(train) + len(test)} CIFAR-10 JPEGs in {seconds:.2f} s")
    for ds, array in zip((train, test), arrays):
        assert array.shape == (len(ds), 32, 32, 3) and array.dtype == np.uint8
        for i in (0, 4321 % len(ds), len(ds) - 1):  # against a plain PIL decode of the same file
            assert ds.paths[i].parent.name == ds.classes[ds.labels[i]]
            assert np.array_equal(array[i], np.asarray(Image.open(ds.paths[i]).convert("RGB")))
    assert train.skipped == test.skipped == []


# ---------------------------------------------------------------- CIFAR

def cifar_pixel(g, y, x, c):
    """Pixel (y, x, c) of image g, distinct along every axis so a wrong transpose shows."""
    return (g + 7 * c + 13 * y + 29 * x) % 256


def cifar_rows(first: int, n: int) -> np.ndarray:
    # Written flat in the order CIFAR documents: all red (row-major), then green, then blue.
    return np.array([[cifar_pixel(g, y, x, c) for c in range(3) for y in range(32) for x in range(32)]
                     for g in range(first, first + n)], dtype=np.uint8)


def dump(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj))


def make_cifar10(root: Path, per_batch: int = 2) -> Path:
    folder = root / "cifar-10-batches-py"
    dump(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_vis": 3072})
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        first = b * per_batch
        dump(folder / name, {"data": cifar_rows(first, per_batch), "batch_label": name,
                             "labels": [(g * 3) % 10 for g in range(first, first + per_batch)]})
    return folder


def expected_cifar(first: int, n: int) -> np.ndarray:
    pixels = np.fromfunction(lambda g, y, x, c: cifar_pixel(g + first, y, x, c), (n, 32, 32, 3), dtype=int)
    return pixels.astype(np.uint8)


def test_cifar10_reads_batches_in_order_chw_to_hwc(tmp_path):
    make_cifar10(tmp_path)
    train = load_cifar(tmp_path, "cifar10", "train")
    assert train.images.shape == (10, 32, 32, 3) and train.images.dtype == np.uint8
    assert np.array_equal(train.images, expected_cifar(0, 10))
    assert train.labels.tolist() == [(g * 3) % 10 for g in range(10)] and train.classes == CIFAR10_NAMES
    test = load_cifar(tmp_path / "cifar-10-batches-py", "cifar10", "test")  # the folder itself works too
    assert np.array_equal(test.images, expected_cifar(10, 2)) and test.labels.tolist() == [0, 3]


def test_cifar100_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    fine = [f"class{i:03d}" for i in range(100)]
    dump(folder / "meta", {"fine_label_names": fine, "coarse_label_names": [f"super{i}" for i in range(20)]})
    dump(folder / "train", {"data": cifar_rows(0, 4), "fine_labels": [99, 0, 57, 3], "coarse_labels": [1, 2, 3, 4]})
    dump(folder / "test", {"data": cifar_rows(4, 1), "fine_labels": [42], "coarse_labels": [0]})
    train = load_cifar(tmp_path, "cifar100", "train")
    assert train.classes == fine and train.labels.tolist() == [99, 0, 57, 3]
    assert np.array_equal(train.images, expected_cifar(0, 4))
    assert load_cifar(tmp_path, "cifar100", "test").labels.tolist() == [42]


def test_cifar_missing_without_download_says_how(tmp_path):
    with pytest.raises(DataError, match="data.download=true") as err:
        load_cifar(tmp_path, "cifar10", "train")
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "data_batch_1" in str(err.value)


def test_cifar_bad_batches(tmp_path):
    folder = make_cifar10(tmp_path)
    dump(folder / "test_batch", {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})
    with pytest.raises(DataError, match=r"'data' must be uint8 \(n, 3072\)"):
        load_cifar(tmp_path, "cifar10", "test")
    dump(folder / "test_batch", {"data": cifar_rows(0, 2), "labels": [0, 10]})
    with pytest.raises(DataError, match=r"labels must be in \[0, 10\)"):
        load_cifar(tmp_path, "cifar10", "test")
    (folder / "test_batch").write_bytes(b"\x80\x04 truncated")
    with pytest.raises(DataError, match="cannot be read") as err:
        load_cifar(tmp_path, "cifar10", "test")
    assert str(folder / "test_batch") in str(err.value)


class _Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as the official CIFAR batches, pickled by Python 2, hold them."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def test_cifar_reads_python2_pickles(tmp_path):
    # The official files: protocol 2, str keys and array data as BINSTRING, numpy 1.x module names.
    folder = make_cifar10(tmp_path)
    buf = io.BytesIO()
    _Python2Pickler(buf, protocol=2).dump({b"data": cifar_rows(10, 2), b"labels": [4, 1], b"batch_label": b"test"})
    (folder / "test_batch").write_bytes(buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"cnumpy.core.multiarray\n_reconstruct" in (folder / "test_batch").read_bytes()
    test = load_cifar(tmp_path, "cifar10", "test")
    assert np.array_equal(test.images, expected_cifar(10, 2)) and test.labels.tolist() == [4, 1]


class _OpensAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    folder = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    dump(folder / "test_batch", {"data": _OpensAFile(marker), "labels": []})
    with pytest.raises(DataError, match="open is not allowed in a CIFAR file"):
        load_cifar(tmp_path, "cifar10", "test")
    assert not marker.exists()


def cifar10_tarball(tmp_path: Path) -> bytes:
    make_cifar10(tmp_path / "src", per_batch=1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return buf.getvalue()


def serve(monkeypatch, payload: bytes) -> list[str]:
    """Replace the network: urlopen returns `payload`; the returned list records the URLs asked for."""
    asked = []

    def fake_urlopen(url, timeout):
        asked.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    return asked


def test_cifar_download_md5_mismatch_extracts_nothing(tmp_path, monkeypatch):
    payload = cifar10_tarball(tmp_path)
    asked = serve(monkeypatch, payload)
    root = tmp_path / "data"
    with pytest.raises(DataError, match="md5") as err:
        load_cifar(root, "cifar10", "train", download=True)
    assert hashlib.md5(payload).hexdigest() in str(err.value)
    assert "c58f30108f718f92721af3b95e74349a" in str(err.value)
    assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    assert list(root.iterdir()) == []  # no partial archive, nothing extracted


def test_cifar_download_verified_then_read(tmp_path, monkeypatch):
    payload = cifar10_tarball(tmp_path)
    monkeypatch.setitem(cifar.SPECS, "cifar10",
                        dataclasses.replace(cifar.SPECS["cifar10"], md5=hashlib.md5(payload).hexdigest()))
    asked = serve(monkeypatch, payload)
    root = tmp_path / "data"
    train = load_cifar(root, "cifar10", "train", download=True)
    assert np.array_equal(train.images, expected_cifar(0, 5)) and train.labels.tolist() == [0, 3, 6, 9, 2]
    assert [p.name for p in root.iterdir()] == ["cifar-10-batches-py"]  # the archive is gone
    assert load_cifar(root, "cifar10", "test", download=True).labels.tolist() == [5]
    assert len(asked) == 1  # present files are not fetched again


def escaping_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("cifar-10-batches-py/../../escaped")
    info.size = 1
    return info


def link_member() -> tarfile.TarInfo:
    info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
    info.type, info.linkname = tarfile.SYMTYPE, "batches.meta"
    return info


@pytest.mark.parametrize("member", [escaping_member, link_member])
def test_cifar_download_refuses_unsafe_archive(tmp_path, monkeypatch, member):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = member()
        tar.addfile(info, io.BytesIO(b"x") if info.isfile() else None)
    payload = buf.getvalue()
    monkeypatch.setitem(cifar.SPECS, "cifar10",
                        dataclasses.replace(cifar.SPECS["cifar10"], md5=hashlib.md5(payload).hexdigest()))
    serve(monkeypatch, payload)
    root = tmp_path / "a" / "b"
    with pytest.raises(DataError, match="is not a plain file or folder"):
        load_cifar(root, "cifar10", "train", download=True)
    assert not (tmp_path / "escaped").exists() and list(root.iterdir()) == []


def test_cifar_download_network_error_names_url(tmp_path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="no route to host") as err:
        load_cifar(tmp_path, "cifar100", "test", download=True)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in str(err.value)


# ---------------------------------------------------------------- Fashion-MNIST

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def fashion_pixels(n: int) -> np.ndarray:
    return np.fromfunction(lambda i, y, x: (5 * i + 3 * y + x) % 256, (n, 28, 28), dtype=int).astype(np.uint8)


def write_fashion(root: Path, split: str, n: int, gz: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    prefix = {"train": "train", "test": "t10k"}[split]
    for stem, data in ((f"{prefix}-images-idx3-ubyte", idx_bytes(fashion_pixels(n), 0x803)),
                       (f"{prefix}-labels-idx1-ubyte", idx_bytes(np.arange(n, dtype=np.uint8) % 10, 0x801))):
        if gz:
            (root / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / stem).write_bytes(data)


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx_to_three_channels(tmp_path, gz):
    write_fashion(tmp_path, "test", 13, gz)
    ds = load_fashion_mnist(tmp_path, "test")
    assert ds.images.shape == (13, 28, 28, 3) and ds.images.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(ds.images[..., c], fashion_pixels(13))
    assert ds.labels.tolist() == [i % 10 for i in range(13)]
    assert ds.classes == FASHION_CLASSES and len(ds.classes) == 10 and ds.classes[9] == "Ankle boot"


def test_fashion_mnist_truncated_and_wrong_files(tmp_path):
    write_fashion(tmp_path, "train", 5, gz=False)
    images = tmp_path / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match=f"must be {16 + 5 * 28 * 28} bytes") as err:
        load_fashion_mnist(tmp_path, "train")
    assert str(images) in str(err.value)

    labels = tmp_path / "train-labels-idx1-ubyte"
    images.write_bytes(labels.read_bytes())  # a labels file where images belong
    with pytest.raises(DataError, match="magic number must be 0x00000803, is 0x00000801"):
        load_fashion_mnist(tmp_path, "train")

    write_fashion(tmp_path / "gz", "train", 5, gz=True)
    gz = tmp_path / "gz" / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot be read") as err:
        load_fashion_mnist(tmp_path / "gz", "train")
    assert str(gz) in str(err.value)

    write_fashion(tmp_path / "mismatch", "train", 5, gz=False)
    (tmp_path / "mismatch" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8), 0x801))
    with pytest.raises(DataError, match="holds 5 images but .* holds 4 labels"):
        load_fashion_mnist(tmp_path / "mismatch", "train")

    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*does not exist"):
        load_fashion_mnist(tmp_path, "test")


@pytest.mark.skipif(not Path(DEFAULT_ROOT).is_dir(),
                    reason=f"real Fashion-MNIST not installed at {DEFAULT_ROOT} "
                           f"(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real_files():
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    assert train.images.shape == (60_000, 28, 28, 3) and test.images.shape == (10_000, 28, 28, 3)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


# ---------------------------------------------------------------- build_dataset

def test_build_dataset_dispatches(tmp_path):
    make_cifar10(tmp_path / "c")
    ds = build_dataset(DataConfig(dataset="cifar10", path=str(tmp_path / "c")), "test")
    assert np.array_equal(ds.images, expected_cifar(10, 2))

    write_fashion(tmp_path / "f", "train", 3, gz=True)
    fashion = build_dataset(DataConfig(dataset="fashion_mnist", path=str(tmp_path / "f")), "train")
    assert fashion.labels.tolist() == [0, 1, 2]

    for label, name in enumerate("abc"):   # the splits must hold the same classes
        save(tmp_path / "i" / "tr" / name / "0.png", encoded(label, 0))
    make_tree_with_bad_files(tmp_path / "i" / "te")
    cfg = DataConfig(dataset="imagefolder", path=str(tmp_path / "i"), train_split="tr", test_split="te",
                     on_error="skip")
    assert build_dataset(cfg, "train").labels.tolist() == [0, 1, 2]
    test = build_dataset(cfg, "test")  # skip: checked on build, bad files already dropped
    assert len(test.skipped) == 3 and test.labels.tolist() == [0, 0, 1, 2]

    shapes = build_dataset(DataConfig(dataset="shapes", num_train=20, num_test=10, image_size=16), "test")
    assert shapes.images.shape == (10, 16, 16, 3)

    with pytest.raises(ValueError, match="split='val'"):
        build_dataset(cfg, "val")
