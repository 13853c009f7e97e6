"""An ImageFolder holding every kind of bad data the loaders must answer for, a JPEG that only a
decode finds bad, symbolic links that lead to no file and class folders that lead nowhere, shared by
the loader tests."""
import io
import os
from pathlib import Path

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


@pytest.fixture
def broken_links(tmp_path):
    """make(folder) -> three image-named symbolic links in `folder` that lead to no file, in name order:
    dangling.jpg (to tmp_path/.gone/missing.jpg, which does not exist) and loop_a.jpg, loop_b.jpg (each
    the other's target). Creating the missing file repairs the first."""
    def make(folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(tmp_path / ".gone" / "missing.jpg", folder / "dangling.jpg")
        os.symlink("loop_b.jpg", folder / "loop_a.jpg")
        os.symlink("loop_a.jpg", folder / "loop_b.jpg")
        return [folder / "dangling.jpg", folder / "loop_a.jpg", folder / "loop_b.jpg"]
    return make


@pytest.fixture
def broken_link_reasons(tmp_path) -> list[str]:
    """What the loaders say of `broken_links`'s three links, in their order."""
    missing = os.path.realpath(tmp_path / ".gone" / "missing.jpg")
    return [f"BrokenLinkError: dangling symbolic link (its target {missing!r} does not exist)",
            "BrokenLinkError: symbolic link loop (too many levels of symbolic links through 'loop_b.jpg')",
            "BrokenLinkError: symbolic link loop (too many levels of symbolic links through 'loop_a.jpg')"]


@pytest.fixture(params=["dangling", "loop"])
def broken_class_links(request, tmp_path) -> dict:
    """data/train: real classes a and d (an image each) and, by the parameter, class-folder links that lead
    nowhere: b -> tmp_path/gone ("dangling") or b -> c -> b ("loop"); data/test: each of these classes real.

    "root", "train", "whys" (link name -> what is wrong with it) and "message" (the one-line error that
    names the first link).
    """
    root, gone = tmp_path / "data", tmp_path / "gone"
    dangling = f"dangling symbolic link (its target {os.path.realpath(gone)!r} does not exist)"
    loop = "symbolic link loop (too many levels of symbolic links through {!r})"
    links = {"dangling": {"b": (gone, dangling)},
             "loop": {"b": ("c", loop.format("c")), "c": ("b", loop.format("b"))}}[request.param]
    for split, classes in (("train", "ad"), ("test", ["a", *links, "d"])):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(pixels(i)).save(root / split / name / "0.png")
    train = root / "train"
    for name, (target, _) in links.items():
        os.symlink(target, train / name)
    whys = {name: why for name, (_, why) in links.items()}
    message = (f"class folder {str(train / 'b')!r}: {whys['b']}; a class folder cannot be skipped, whatever "
               "data.on_error says: leaving it out would silently shift the labels of every later class")
    return {"root": root, "train": train, "whys": whys, "message": message}
