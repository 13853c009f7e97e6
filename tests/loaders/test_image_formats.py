"""ImageFolder formats: fastssl's reader indexes a folder as torchvision's ImageFolder does, so the
torchvision baseline and every fastssl backend train on the same (file, label) list."""
import numpy as np
from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from fastssl.loaders.datasets import ImageFolderDataset
from fastssl.loaders.datasets.imagefolder import EXTENSIONS

# torchvision's extensions that PIL has a plugin for (today every one of them).
DECODABLE = [ext for ext in IMG_EXTENSIONS if ext in Image.registered_extensions()]


def test_extensions_are_torchvisions_that_pil_decodes():
    assert sorted(EXTENSIONS) == sorted(DECODABLE)


def test_one_file_per_extension_indexes_and_decodes_like_torchvision(tmp_path):
    rng = np.random.default_rng(0)
    classes = ["Zebra", "cats", "dogs"]   # code-point order: "Z" < "c"
    for i, ext in enumerate(DECODABLE):
        pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert("L" if ext == ".pgm" else "RGB")   # PGM is grayscale
        name = f"img{i}{ext.upper() if i % 2 else ext}"   # extensions match whatever their case
        folder = tmp_path / classes[i % len(classes)]
        folder.mkdir(exist_ok=True)
        image.save(folder / name, Image.registered_extensions()[ext])
    (tmp_path / "cats" / "notes.txt").write_text("not an image")

    ours = ImageFolderDataset(tmp_path)
    theirs = ImageFolder(str(tmp_path))
    assert ours.classes == theirs.classes
    assert [(str(p), int(y)) for p, y in zip(ours.paths, ours.labels)] == theirs.samples
    assert len(ours) == len(DECODABLE)
    for i, path in enumerate(ours.paths):
        with Image.open(path) as image:
            expected = np.asarray(image.convert("RGB"))
        assert np.array_equal(np.asarray(ours.load_pil(i)), expected), path.name
