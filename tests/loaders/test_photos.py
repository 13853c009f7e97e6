"""`fastssl data photos`: a data-free JPEG ImageFolder at photo sizes that every reader accepts."""
import hashlib
import importlib.util

import numpy as np
import pytest
from PIL import Image

from fastssl.cli import main
from fastssl.loaders.datasets import ImageFolderDataset
from fastssl.loaders.datasets import photos


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


@pytest.mark.parametrize("skimage", [False, True], ids=["drawn", "scikit-image"])
def test_a_deterministic_balanced_folder_of_distinct_full_size_jpegs(tmp_path, monkeypatch, skimage):
    if skimage and importlib.util.find_spec("skimage") is None:
        pytest.skip("scikit-image is not installed (pip install -e '.[dev]')")
    if not skimage:
        monkeypatch.setattr(photos, "_skimage_photos", lambda: None)
    made = photos.write_photo_folder(tmp_path / "a", train=30, test=6, classes=4, seed=1)
    assert made.source == ("scikit-image" if skimage else "drawn") and made.files == 36
    train = ImageFolderDataset(tmp_path / "a" / "train")
    assert train.classes == [f"class{c:03d}" for c in range(4)]
    assert np.bincount(train.labels).tolist() == [8, 8, 7, 7]
    assert len(ImageFolderDataset(tmp_path / "a" / "test")) == 6
    sizes = []
    for i in range(len(train)):
        image = train.load_pil(i)
        assert image.mode == "RGB"
        sizes.append(image.size)
    # photo sizes: every side at least 16 px, typical sides in the hundreds
    assert min(min(s) for s in sizes) >= 16 and np.median([max(s) for s in sizes]) >= 200
    digest = _digest(tmp_path / "a")
    assert len(set(digest.values())) == 36                    # no two files the same bytes
    assert made.bytes == sum(p.stat().st_size for p in (tmp_path / "a").rglob("*.jpg"))
    photos.write_photo_folder(tmp_path / "b", train=30, test=6, classes=4, seed=1)
    assert _digest(tmp_path / "b") == digest                  # same seed, same bytes
    with Image.open(next((tmp_path / "a").rglob("*.jpg"))) as f:
        assert f.format == "JPEG"


def test_cli_refuses_a_non_empty_folder_and_bad_counts(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["data", "photos", str(tmp_path), "--train", "2"]) == 2
    assert "not empty" in capsys.readouterr().err and (tmp_path / "keep.txt").read_text() == "mine"
    assert main(["data", "photos", str(tmp_path / "new"), "--train", "0"]) == 2
    assert "need train >= 1" in capsys.readouterr().err


def test_cli_writes_and_says_where(tmp_path, capsys):
    assert main(["data", "photos", str(tmp_path / "p"), "--train", "5", "--test", "2", "--classes", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 7 JPEGs" in out and f"imagefolder:{tmp_path / 'p'} " in out
