"""An ImageFolder holding every kind of bad data the loaders must answer for, and a JPEG that only a
decode finds bad, shared by the loader tests."""
import io

import numpy as np
import pytest
from PIL import Image

SIDE = 8


def pixels(i: int) -> np.ndarray:
    """A SIDE x SIDE image of image number i, textured so that crops and jitter change it."""
    rng = np.random.default_rng(i)
    return rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def cut_jpeg() -> bytes:
    """A JPEG whose header parses (PIL reports its 64 x 64 size) but whose pixel data is cut short: only
    a decode finds it, not the start-up index's header read."""
    whole = encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    return whole[:len(whole) * 6 // 10]


@pytest.fixture
def bad_folder(tmp_path) -> dict:
    """root/<class>/ with good images in odd modes and formats plus bad files; returns what is where.

    "convertible": files that must decode to the RGB PIL gives; "bad": files no decoder can read;
    "non_image": a file the loaders ignore; "empty": a class folder with no image file.
    """
    root = tmp_path / "data"
    rgb = Image.fromarray(pixels(0))
    files = {
        "a/0_rgb.png": encode(rgb, "PNG"),
        "a/1_gray.jpg": encode(rgb.convert("L"), "JPEG"),
        "a/2_cmyk.jpg": encode(rgb.convert("CMYK"), "JPEG"),
        "b/0_rgba.png": encode(rgb.convert("RGBA"), "PNG"),
        "b/1_png_named.jpg": encode(rgb, "PNG"),
        "b/2_truncated.jpg": encode(rgb, "JPEG")[:200],
        "b/3_zero.jpg": b"",
        "c/0_text.jpg": b"hello, not an image\n",
        "c/1_rgb.png": encode(Image.fromarray(pixels(1)), "PNG"),
        "c/notes.txt": b"not data\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "d_empty").mkdir()
    return {
        "root": root,
        "convertible": [root / n for n in ("a/1_gray.jpg", "a/2_cmyk.jpg", "b/0_rgba.png", "b/1_png_named.jpg")],
        "bad": [root / n for n in ("b/2_truncated.jpg", "b/3_zero.jpg", "c/0_text.jpg")],
        "non_image": root / "c/notes.txt",
        "empty": root / "d_empty",
        "images": 6,
    }
