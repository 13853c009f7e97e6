"""A split's fingerprint stays the same for the same data (also moved to another folder) and names what
changed otherwise: the image count, classes gained, lost or recounted, other files at the same count."""
import hashlib
import shutil

import numpy as np
from PIL import Image

from fastssl.loaders.datasets import ArrayDataset, ImageFolderDataset, ImagesDataset
from fastssl.loaders.datasets.fingerprint import changes, files_fingerprint, fingerprint


def _folder(root, counts: dict[str, int], seed: int = 0):
    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_files_digest_is_the_sha256_of_names_sizes_and_labels():
    names, sizes, labels = ["a/0.png", "a/1.png", "b/0.png"], np.array([10, 20, 30]), np.array([0, 0, 1])
    got = files_fingerprint(names, sizes, labels, ["a", "b"])
    expected = hashlib.sha256(b"a/0.png\0a/1.png\0b/0.png" + sizes.astype(np.int64).tobytes()
                              + labels.astype(np.int64).tobytes()).hexdigest()[:32]
    class_a = hashlib.sha256(b"a/0.png\0a/1.png" + np.array([10, 20], np.int64).tobytes()).hexdigest()[:32]
    assert got["digest"] == expected and got["images"] == 3 and got["bytes"] == 60
    assert got["classes"][0] == ["a", 2, class_a] and got["classes"][1][:2] == ["b", 1]


def test_an_image_folder_keeps_its_fingerprint_when_moved_and_names_each_change(tmp_path):
    root = _folder(tmp_path / "data", {"cat": 3, "dog": 2})
    before = fingerprint(ImageFolderDataset(root))
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    assert changes(before, fingerprint(ImageFolderDataset(moved))) == []

    (root / "dog" / "1.png").unlink()
    _folder(root, {"owl": 1}, seed=1)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(root / "cat" / "0.png")   # same name, other bytes
    lines = changes(before, fingerprint(ImageFolderDataset(root)))
    assert lines[0] == f"{before['bytes']:,} -> {fingerprint(ImageFolderDataset(root))['bytes']:,} bytes"
    assert lines[1:] == ["classes added: owl", "classes with another number of images: dog (2 -> 1)",
                         "classes with as many images, other content: cat"]


def test_in_memory_pixels_name_a_changed_class_and_another_order():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 1, 0, 1, 0, 1])
    base = ArrayDataset(images, labels, ["even", "odd"])
    assert changes(fingerprint(base), fingerprint(ArrayDataset(images.copy(), labels, ["even", "odd"]))) == []
    edited = images.copy()
    edited[3, 0, 0, 0] ^= 1
    assert changes(fingerprint(base), fingerprint(ArrayDataset(edited, labels, ["even", "odd"]))) == [
        "classes with as many images, other content: odd"]
    order = [1, 0, 2, 3, 4, 5]   # an even and an odd image swap places: each class reads alike, the order differs
    assert changes(fingerprint(base), fingerprint(ArrayDataset(images[order], labels[order], ["even", "odd"]))) == [
        "the same images in another order or under other labels"]
    assert changes(fingerprint(base), fingerprint(ArrayDataset(images[:4], labels[:4], ["even", "odd"])))[:1] == [
        "6 images -> 4 images"]


def test_unlabelled_images_count_no_classes(tmp_path):
    root = _folder(tmp_path / "photos", {"2024": 2, "2025": 1})
    got = fingerprint(ImagesDataset(root))
    assert got["images"] == 3 and got["classes"] == []
    (root / "2025" / "0.png").unlink()
    assert changes(got, fingerprint(ImagesDataset(root)))[0] == "3 images -> 2 images"
