"""Every backend reads a file as the same pixels: those ImageFolderDataset.load_pil gives.

The convention is torchvision's default loader (PIL's Image.open + convert("RGB")): the EXIF orientation
tag is ignored, so a file is read as stored, and its size is the size PIL reports (the crop boxes are
drawn from it). The files are the odd ones real folders hold: EXIF orientations 1-8 on a non-square
image that each rotation or flip changes, CMYK and grayscale JPEGs, 16-bit grayscale, palette and RGBA
PNGs, a 1x1 image and a 4000x3000 photo-sized JPEG. Each backend's un-augmented views (the whole image,
crop scale 1.0 with an aspect ratio inside the crop's range, resized to S x S and, as a multi-crop local
view, to S/2 x S/2) are compared with load_pil's image resized to the view's side by PIL: the backends
resample with other filters (DALI's linear,
OpenCV's area) and JPEG decoders round apart, hence a tolerance on the mean, far below what a rotation,
a flip or a smeared view changes.
"""
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from fastssl.config import Config
from fastssl.loaders.augment import IMAGENET_MEAN, IMAGENET_STD
from fastssl.loaders.datasets import ImageFolderDataset
from fastssl.loaders.factory import build_train_loader
from fastssl.loaders.settings import CropGroup

S = 32
WIDTH, HEIGHT = 120, 96       # 5:4, inside the crop's (3/4, 4/3) ratio range: the full crop is the image
ORIENTATION = 0x0112          # the EXIF tag
TOLERANCE = 2.0               # mean absolute difference in 0..255 levels, per image
ROTATED = 30.0                # the least any orientation other than 1 changes the S x S image (checked)
HAS_DALI = importlib.util.find_spec("nvidia.dali") is not None
HAS_FFCV = importlib.util.find_spec("ffcv") is not None


def pattern(width: int, height: int) -> np.ndarray:
    """Red rises left to right, green top to bottom, blue fills the top-left quarter: smooth, so that
    resampling filters agree, and each of the eight rotations and flips gives another image."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, width)[None, :]
    image[..., 1] = np.linspace(0, 255, height)[:, None]
    image[:height // 2, :width // 2, 2] = 255
    return image


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd") / "data"
    (root / "exif").mkdir(parents=True)
    (root / "odd").mkdir()
    base = Image.fromarray(pattern(WIDTH, HEIGHT))
    for k in range(1, 9):
        exif = Image.Exif()
        exif[ORIENTATION] = k
        base.save(root / "exif" / f"orientation{k}.jpg", quality=95, exif=exif)
    base.convert("CMYK").save(root / "odd" / "cmyk.jpg", quality=95)
    base.convert("L").save(root / "odd" / "gray.jpg", quality=95)
    Image.fromarray(pattern(WIDTH, HEIGHT)[..., 1].astype(np.uint16) * 257).save(root / "odd" / "gray16.png")
    palette = Image.fromarray(pattern(WIDTH, HEIGHT)[..., 0]).convert("P")
    palette.putpalette([c for i in range(256) for c in (i, 255 - i, i // 2)])
    palette.save(root / "odd" / "palette.png")
    rgba = pattern(WIDTH, HEIGHT)
    rgba = np.dstack([rgba, rgba[..., 1]])          # alpha varies: it is dropped, never composited
    Image.fromarray(rgba).save(root / "odd" / "rgba.png")
    Image.new("RGB", (1, 1), (200, 30, 90)).save(root / "odd" / "pixel.jpg", quality=95)
    Image.fromarray(pattern(4000, 3000)).save(root / "odd" / "large.jpg", quality=90)
    return ImageFolderDataset(root)


@pytest.fixture(scope="module")
def beton(odd_folder, tmp_path_factory):
    """The folder through `fastssl data convert --raw`: raw pixels, no --max-res, so nothing is resampled."""
    pytest.importorskip("fastssl.loaders.ffcv_imports", reason="ffcv not installed (pip install -e '.[ffcv]')")
    from fastssl.cli import main

    dst = tmp_path_factory.mktemp("beton") / "odd.beton"
    assert main(["data", "convert", "--src", f"imagefolder:{odd_folder.root}", "--dst", str(dst), "--raw",
                 "--workers", "1"]) == 0
    return dst


def reference(ds: ImageFolderDataset, i: int, side: int = S) -> torch.Tensor:
    """load_pil's image i, resized to side x side by PIL (bilinear, antialiased): (3, side, side) in 0..255."""
    image = ds.load_pil(i).resize((side, side), Image.BILINEAR)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float()


def unaugmented(backend: str, ds: ImageFolderDataset, beton=None, device="cpu"):
    """One batch of the whole folder, two un-augmented views (S and S/2 px, a multi-crop config whose groups
    both take the whole image), from `backend`."""
    cfg = Config()
    cfg.data.image_size, cfg.loader.backend, cfg.loader.batch_size = S, backend, len(ds)
    cfg.loader.workers = 1 if backend in ("dali", "ffcv") else 0
    cfg.loader.beton = str(beton) if beton else cfg.loader.beton
    a = cfg.augment
    a.crops = [CropGroup(1, S, [1.0, 1.0]), CropGroup(1, S // 2, [1.0, 1.0])]
    a.flip_p = a.jitter_p = a.grayscale_p = 0.0
    return next(iter(build_train_loader(cfg.load_settings(), ds, device)))


def assert_views_show_the_reference(batch, ds: ImageFolderDataset) -> None:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert sorted(batch.index.tolist()) == list(range(len(ds)))
    assert [view.shape[-1] for view in batch.views] == [S, S // 2]
    for view in batch.views:
        for row, i in enumerate(batch.index.tolist()):
            pixels = (view[row].float().cpu() * std + mean) * 255
            diff = (pixels - reference(ds, i, view.shape[-1])).abs().mean()
            assert diff < TOLERANCE, f"{ds.paths[i].name}: mean difference {diff:.1f} levels from load_pil's"


def test_orientation_tags_are_written_and_would_show(odd_folder):
    """The test is meaningful: the tags are in the files, and applying any but 1 changes the S x S image
    by far more than the tolerance."""
    for i, path in enumerate(odd_folder.paths):
        if path.parent.name != "exif":
            continue
        with Image.open(path) as image:
            k = image.getexif()[ORIENTATION]
            turned = ImageOps.exif_transpose(image).convert("RGB").resize((S, S), Image.BILINEAR)
        change = (torch.from_numpy(np.array(turned)).permute(2, 0, 1).float() - reference(odd_folder, i)).abs()
        assert (change.mean() > ROTATED) == (k != 1), path.name


@pytest.mark.parametrize("backend", [
    "tensor", "torchvision",
    pytest.param("dali", marks=pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")),
    pytest.param("ffcv", marks=pytest.mark.skipif(not HAS_FFCV, reason="ffcv is not installed")),
])
def test_every_backend_reads_the_pixels_load_pil_gives(odd_folder, backend, request):
    beton = request.getfixturevalue("beton") if backend == "ffcv" else None
    assert_views_show_the_reference(unaugmented(backend, odd_folder, beton), odd_folder)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_DALI, reason="NVIDIA DALI is not installed")
def test_dali_gpu_decoder_reads_the_pixels_load_pil_gives(odd_folder):
    """The "mixed" decoder (nvJPEG) ignores the orientation tag too."""
    assert_views_show_the_reference(unaugmented("dali", odd_folder, device="cuda"), odd_folder)
