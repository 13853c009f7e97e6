"""`fastssl data convert`: sources, bad data settled at conversion, the CLI, the real CIFAR-10 JPEGs."""
import io
import logging
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Through ffcv_imports, never `import ffcv`: the bare import leaves torch on one thread for the rest of
# the test process (later float comparisons then see other rounding).
pytest.importorskip("fastssl.loaders.ffcv_imports",
                    reason="ffcv not installed (pip install -e '.[ffcv]'; needs libturbojpeg and OpenCV headers)")

from fastssl.cli import main  # noqa: E402
from fastssl.config import FASHION_MNIST_DEFAULT  # noqa: E402
from fastssl.loaders.convert import convert, load_source, parse_source  # noqa: E402
from fastssl.loaders.datasets import ImageFolderDataset  # noqa: E402
from fastssl.loaders.datasets.base import ArrayDataset, DataError  # noqa: E402
from fastssl.loaders.ffcv_backend import BetonFile  # noqa: E402


def stored(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Every image of a raw .beton as stored, and the labels."""
    f = BetonFile(path)
    images = [np.asarray(f.file[p:p + s]).reshape(h, w, 3) for p, s, h, w in zip(f.ptr, f.size, f.height, f.width)]
    return images, f.labels


def put(path: Path, data) -> Path:
    """Write an image (PIL, saved in its format by suffix unless `fmt`) or raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        image, fmt = data
        image.save(path, fmt)
    return path


def jpeg(colour=(90, 90, 90)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(out, "JPEG", quality=95)
    return out.getvalue()


def messy_tree(root: Path) -> dict[str, Path]:
    """One class of good files in every mode, one of bad files (plus a good one so it is not emptied)."""
    good = {
        "rgb": (Image.new("RGB", (4, 4), (1, 2, 3)), "PNG"),
        "gray": (Image.new("L", (4, 4), 77), "PNG"),
        "cmyk": (Image.new("CMYK", (8, 8), (0, 0, 0, 0)), "JPEG"),
        "rgba": (Image.new("RGBA", (4, 4), (10, 20, 30, 0)), "PNG"),
    }
    paths = {name: put(root / "a" / f"{name}.{'jpg' if fmt == 'JPEG' else 'png'}", (im, fmt))
             for name, (im, fmt) in good.items()}
    paths["png_named_jpg"] = put(root / "a" / "z_png.jpg", (Image.new("RGB", (4, 4), (4, 5, 6)), "PNG"))
    paths["truncated"] = put(root / "b" / "1_truncated.jpg", jpeg()[:200])
    paths["zero_bytes"] = put(root / "b" / "2_zero.jpg", b"")
    paths["not_image"] = put(root / "b" / "3_text.jpeg", b"hello, not an image\n")
    paths["b_good"] = put(root / "b" / "4_good.png", (Image.new("RGB", (4, 4), (7, 8, 9)), "PNG"))
    return paths


def test_parse_source():
    assert parse_source("imagefolder:/x/y") == ("imagefolder", Path("/x/y"))
    assert parse_source("fashion_mnist:/d") == ("fashion-mnist", Path("/d"))
    for bad in ("/x/y", "imagenet:/x", "cifar10:"):
        with pytest.raises(DataError, match="must be KIND:PATH"):
            parse_source(bad)


def test_imagefolder_skip_converts_modes_to_rgb_and_counts_bad_files(tmp_path, caplog):
    paths = messy_tree(tmp_path / "src")
    with caplog.at_level(logging.WARNING):
        result = convert(load_source("imagefolder", tmp_path / "src", on_error="skip"), tmp_path / "o.beton",
                         raw=True, workers=1)
    assert [p for p, _ in result.skipped] == [paths[k] for k in ("truncated", "zero_bytes", "not_image")]
    assert any("skipped 3 file(s)" in r.getMessage() for r in caplog.records)
    images, labels = stored(result.path)
    assert result.images == len(images) == 6 and labels.tolist() == [0, 0, 0, 0, 0, 1]
    # Folder order: cmyk, gray, rgb, rgba, z_png (a), then 4_good (b); every pixel as PIL's RGB.
    firsts = [tuple(int(c) for c in im[0, 0]) for im in images]
    assert firsts == [(255, 255, 255), (77, 77, 77), (1, 2, 3), (10, 20, 30), (4, 5, 6), (7, 8, 9)]
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("kind", ["truncated", "zero_bytes", "not_image"])
def test_imagefolder_raise_names_the_file_and_writes_nothing(tmp_path, kind):
    paths = messy_tree(tmp_path / "src")
    for other in {"truncated", "zero_bytes", "not_image"} - {kind}:
        paths[other].unlink()
    with pytest.raises(DataError, match="cannot be decoded") as err:
        convert(load_source("imagefolder", tmp_path / "src"), tmp_path / "o.beton", raw=True, workers=1)
    assert str(paths[kind]) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_empty_class_folder_is_an_error(tmp_path, on_error):
    put(tmp_path / "a" / "0.png", (Image.new("RGB", (4, 4)), "PNG"))
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match="holds no image files") as err:
        load_source("imagefolder", tmp_path, on_error=on_error)
    assert str(tmp_path / "b") in str(err.value)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_cli_convert_refuses_a_class_folder_link_that_leads_nowhere(broken_class_links, on_error, tmp_path, capsys):
    dst = tmp_path / "d.beton"
    argv = ["data", "convert", "--src", f"imagefolder:{broken_class_links['train']}", "--dst", str(dst),
            "--on-error", on_error]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"fastssl data: error: {broken_class_links['message']}\n"
    assert not dst.exists()


def test_a_failure_inside_a_writer_process_is_reported_not_hung(tmp_path):
    class Flaky(ArrayDataset):
        def load_pil(self, index):
            if index == 5:
                raise DataError("image file 'five.jpg': cannot be decoded (gone)")
            return super().load_pil(index)

    data = Flaky(np.zeros((20, 4, 4, 3), np.uint8), np.zeros(20))
    with pytest.raises(DataError, match="five.jpg"):
        convert(data, tmp_path / "o.beton", raw=True, workers=2)
    assert list(tmp_path.iterdir()) == []


def test_cifar10_pickles_and_jpeg_max_res(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = np.arange(4 * 3072, dtype=np.int64).reshape(4, 3072) % 251
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": rows.astype(np.uint8), "labels": [3, 1, 4, 1]}, f)
    raw = convert(load_source("cifar10", tmp_path, "test"), tmp_path / "raw.beton", raw=True, workers=1)
    images, labels = stored(raw.path)
    assert labels.tolist() == [3, 1, 4, 1]
    assert np.array_equal(np.stack(images), rows.astype(np.uint8).reshape(4, 3, 32, 32).transpose(0, 2, 3, 1))
    small = BetonFile(convert(load_source("cifar10", tmp_path, "test"), tmp_path / "j.beton", max_res=16,
                              jpeg_quality=80, workers=1).path)
    assert (small.mode == 0).all() and (small.height == 16).all() and (small.width == 16).all()


def test_bad_arguments(tmp_path):
    data = ArrayDataset(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2))
    with pytest.raises(DataError, match="--jpeg-quality 0"):
        convert(data, tmp_path / "o.beton", jpeg_quality=0)
    with pytest.raises(DataError, match="--max-res 0"):
        convert(data, tmp_path / "o.beton", max_res=0)
    with pytest.raises(DataError, match="--split 'val'"):
        load_source("cifar10", tmp_path, "val")


def test_cli_convert_and_errors(tmp_path, capsys):
    messy_tree(tmp_path / "src")
    dst = tmp_path / "out" / "d.beton"
    argv = ["data", "convert", "--src", f"imagefolder:{tmp_path / 'src'}", "--dst", str(dst), "--raw"]
    assert main(argv + ["--workers", "1"]) == 2
    assert "cannot be decoded" in capsys.readouterr().err and not dst.exists()
    assert main(argv + ["--on-error", "skip", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"wrote 6 images to {dst}" in out and "skipped 3 unreadable files" in out
    assert main(["data", "convert", "--src", "nope:/x", "--dst", str(dst)]) == 2
    with pytest.raises(SystemExit):
        main(argv + ["--jpeg-quality", "80"])                  # --raw and --jpeg-quality exclude each other


def test_cli_convert_names_or_skips_links_that_lead_to_no_file(tmp_path, capsys, broken_links, broken_link_reasons):
    put(tmp_path / "src" / "a" / "0.png", (Image.new("RGB", (4, 4), (1, 2, 3)), "PNG"))
    put(tmp_path / "src" / "b" / "0.png", (Image.new("RGB", (4, 4), (4, 5, 6)), "PNG"))
    links = broken_links(tmp_path / "src" / "a")
    dst = tmp_path / "out" / "d.beton"
    argv = ["data", "convert", "--src", f"imagefolder:{tmp_path / 'src'}", "--dst", str(dst), "--raw", "--workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"image file {str(links[0])!r}: cannot be decoded ({broken_link_reasons[0]}); 2 more bad files" in err
    assert not dst.exists()
    assert main(argv + ["--on-error", "skip"]) == 0
    assert capsys.readouterr().out == f"wrote 2 images to {dst}\nskipped 3 unreadable files (first: {links[0]})\n"
    images, labels = stored(dst)
    assert labels.tolist() == [0, 1] and [im[0, 0].tolist() for im in images] == [[1, 2, 3], [4, 5, 6]]


@pytest.mark.skipif(not Path(FASHION_MNIST_DEFAULT).is_dir(), reason=f"Fashion-MNIST not installed at "
                    f"{FASHION_MNIST_DEFAULT} (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_test_split(tmp_path):
    source = load_source("fashion-mnist", Path(FASHION_MNIST_DEFAULT), "test")
    images, labels = stored(convert(source, tmp_path / "f.beton", raw=True).path)
    assert len(images) == 10_000 and np.array_equal(labels, source.labels)
    assert all(np.array_equal(images[i], source.images[i]) for i in (0, 4321, 9999))


def test_real_cifar10_jpegs(cifar10_jpeg_root, tmp_path):
    source = load_source("imagefolder", cifar10_jpeg_root / "test")
    start = time.perf_counter()
    result = convert(source, tmp_path / "cifar10-test.beton", raw=True)
    print(f"\nconverted {result.images} CIFAR-10 JPEGs (raw) in {time.perf_counter() - start:.2f} s")
    images, labels = stored(result.path)
    assert result.images == 10_000 and np.array_equal(labels, source.labels)
    assert np.bincount(labels).tolist() == [1000] * 10
    for i in (0, 4321, 9999):
        assert np.array_equal(images[i], np.asarray(Image.open(source.paths[i]).convert("RGB")))
    assert isinstance(source, ImageFolderDataset) and source.skipped == []
