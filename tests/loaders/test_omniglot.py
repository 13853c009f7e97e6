"""Omniglot reader: the real archive checked against an independent listing and decode, and every
bad-input rule on tiny generated archives."""
from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image

from fastssl.config import ConfigError, load_config
from fastssl.evaluation.fewshot import sample_episodes
from fastssl.loaders.datasets import DataError, build_dataset, load_omniglot

ZIP = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot-background-small1.zip"
ROOT = "images_background_small1"


@pytest.fixture(scope="module")
def archive() -> Path:
    if not ZIP.is_file():
        pytest.skip(f"real Omniglot data not present ({ZIP}): ../shared is absent")
    return ZIP


@pytest.fixture(scope="module")
def listing(archive) -> dict[str, dict[str, list[str]]]:
    """split -> {"alphabet/character": sorted member names}, from the zip listing alone."""
    with zipfile.ZipFile(archive) as z:
        pngs = [PurePosixPath(n).parts for n in z.namelist() if n.endswith(".png")]
    alphabets = sorted({p[1] for p in pngs})
    test = set(alphabets[-math.ceil(0.4 * len(alphabets)):])
    out = {"train": {}, "test": {}}
    for p in sorted(pngs):
        out["test" if p[1] in test else "train"].setdefault(f"{p[1]}/{p[2]}", []).append("/".join(p))
    return out


@pytest.fixture(scope="module")
def splits(archive) -> dict:
    return {s: load_omniglot(archive, s) for s in ("train", "test")}


def test_counts_classes_and_disjoint_alphabets(splits, listing):
    assert {s: sorted({c.split("/")[0] for c in listing[s]}) for s in listing} == {
        "train": ["Balinese", "Early_Aramaic", "Greek"], "test": ["Korean", "Latin"]}
    for split, ds in splits.items():
        assert ds.classes == sorted(listing[split])   # labels 0..C-1 in sorted (alphabet, character) order
        assert len(ds) == sum(len(files) for files in listing[split].values())
        assert ds.images.shape[1:] == (105, 105, 3) and ds.images.dtype == np.uint8
        assert np.array_equal(np.bincount(ds.labels), np.full(len(ds.classes), 20))
        assert np.all(np.diff(ds.labels) >= 0)
    assert (len(splits["train"].classes), len(splits["test"].classes)) == (70, 66)
    assert (len(splits["train"]), len(splits["test"])) == (1400, 1320)
    assert not set(splits["train"].classes) & set(splits["test"].classes)


@pytest.mark.parametrize("split, name, k", [("train", "Balinese/character01", 0), ("test", "Latin/character05", 3),
                                            ("test", "Korean/character40", 19)])
def test_pixels_equal_an_independent_decode(archive, splits, listing, split, name, k):
    ds = splits[split]
    index = np.flatnonzero(ds.labels == ds.classes.index(name))[k]
    with zipfile.ZipFile(archive) as z:
        expected = np.asarray(Image.open(io.BytesIO(z.read(listing[split][name][k]))).convert("RGB"))
    assert np.array_equal(ds.images[index], expected)
    assert set(np.unique(expected)) == {0, 255} and expected.mean() > 127   # black strokes on white


def test_extracted_folder_equals_zip(archive, splits, tmp_path):
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path)
    for path, names in ((tmp_path, ("train", "test")), (tmp_path / ROOT, ("test",))):
        for split in names:
            ds = load_omniglot(path, split)
            assert np.array_equal(ds.images, splits[split].images)
            assert np.array_equal(ds.labels, splits[split].labels)
            assert ds.classes == splits[split].classes


def test_config_validates_and_fewshot_episodes_fit(archive):
    cfg = load_config(None, ["data.dataset=omniglot", f"data.path={archive}"])
    test = build_dataset(cfg.data, "test")
    assert len(test) == 1320
    support, query = sample_episodes(test.labels, ways=5, shots=5, queries=15, episodes=10, seed=0)
    assert support.shape == (10, 5, 5) and query.shape == (10, 5, 15)


def test_config_rejects_a_missing_path():
    with pytest.raises(ConfigError, match=r"^data.path='/no/such/omniglot.zip': must be an existing directory "
                                          r"or \.zip file$"):
        load_config(None, ["data.dataset=omniglot", "data.path=/no/such/omniglot.zip"])


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (4, 4), value).save(buf, "PNG")
    return buf.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


GOOD = {f"{ROOT}/A/character01/1.png": png(1), f"{ROOT}/B/character01/1.png": png(0)}


@pytest.mark.parametrize("members, rule", [
    ({"omniglot/A/character01/1.png": png(1), "readme.txt": b"x"}, "holds no images_background"),
    ({**GOOD, f"{ROOT}/B/character01/2.png": b"\x89PNG not really"}, "cannot be read or decoded"),
    ({**GOOD, "images_background/A/character01/1.png": png(1)}, "it must hold one images_background"),
    ({f"{ROOT}/A/character01/1.png": png(1)}, "at least 2 are needed"),
])
def test_bad_archives_name_the_path_and_rule(tmp_path, members, rule):
    path = write_zip(tmp_path / "bad.zip", members)
    with pytest.raises(DataError, match=rule) as info:
        load_omniglot(path, "test")
    assert str(path) in str(info.value)


def test_missing_path_and_not_a_zip(tmp_path):
    with pytest.raises(DataError, match="does not exist") as info:
        load_omniglot(tmp_path / "nowhere.zip")
    assert str(tmp_path / "nowhere.zip") in str(info.value)
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="is neither a folder nor a readable .zip"):
        load_omniglot(tmp_path / "x.zip")


def test_generated_zip_and_folder_agree(tmp_path):
    """Split rule on two alphabets: A trains, B tests; a folder of the same files reads the same."""
    path = write_zip(tmp_path / "tiny.zip", GOOD)
    train, test = load_omniglot(path, "train"), load_omniglot(path, "test")
    assert (train.classes, test.classes) == (["A/character01"], ["B/character01"])
    assert train.images[0].min() == 255 and test.images[0].max() == 0
    with zipfile.ZipFile(path) as z:
        z.extractall(tmp_path / "x")
    assert np.array_equal(load_omniglot(tmp_path / "x" / ROOT, "test").images, test.images)
