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


def drawings(root: str, alphabets: str, value: int) -> dict[str, bytes]:
    return {f"{root}/{a}/character01/1.png": png(value) for a in alphabets}


@pytest.mark.parametrize("form", ["one zip", "two zips", "two folders"])
@pytest.mark.parametrize("background", ["images_background", "images_background_small1"])
def test_background_trains_and_evaluation_tests(tmp_path, form, background):
    """The community's split: every background alphabet trains, every evaluation alphabet tests."""
    members = {**drawings(background, "AB", 1), **drawings("images_evaluation", "CD", 0)}
    if form == "one zip":
        path = write_zip(tmp_path / "omniglot.zip", members)
    else:
        path = tmp_path / "omniglot"
        path.mkdir()
        for root in (background, "images_evaluation"):
            part = {n: d for n, d in members.items() if n.startswith(root + "/")}
            write_zip(path / f"{root}.zip", part)
            if form == "two folders":
                with zipfile.ZipFile(path / f"{root}.zip") as z:
                    z.extractall(path)
                (path / f"{root}.zip").unlink()
    train, test = load_omniglot(path, "train"), load_omniglot(path, "test")
    assert train.classes == ["A/character01", "B/character01"] and test.classes == ["C/character01", "D/character01"]
    assert train.images.min() == 255 and test.images.max() == 0
    assert train.disjoint_classes and test.disjoint_classes
    if form != "one zip":
        assert load_config(None, ["data.dataset=omniglot", f"data.path={path}"]).data.path == str(path)


def test_an_evaluation_folder_alone_holds_out_alphabets(tmp_path):
    path = write_zip(tmp_path / "e.zip", drawings("images_evaluation", "CD", 0))
    assert load_omniglot(path, "train").classes == ["C/character01"]
    assert load_omniglot(path, "test").classes == ["D/character01"]


def test_two_background_sets_next_to_evaluation_are_ambiguous(tmp_path):
    write_zip(tmp_path / "images_background.zip", drawings("images_background", "AB", 1))
    write_zip(tmp_path / "images_background_small1.zip", drawings("images_background_small1", "AB", 1))
    write_zip(tmp_path / "images_evaluation.zip", drawings("images_evaluation", "C", 0))
    with pytest.raises(DataError, match="images_background, images_background_small1") as info:
        load_omniglot(tmp_path, "train")
    assert str(tmp_path) in str(info.value)


TRAIN = ["data.dataset=omniglot", "data.image_size=16", "loader.batch_size=8", "train.max_steps=2",
         "train.log_every=1", "train.precision=fp32", "train.device=cpu", "knn.k=2", "knn.every_epochs=1",
         "model.width=0.125", "model.projector_hidden=16", "model.projector_out=8", "augment.impl=reference",
         "method.loss_impl=reference"]


def test_training_reports_no_knn_score_across_disjoint_alphabets(tmp_path, capsys):
    """kNN compares test drawings with train classes: with no class shared, there is no score to print."""
    from fastssl.cli import main
    from fastssl.engine.metrics import read_metrics

    members = {f"{ROOT}/{a}/character0{c}/{k}.png": png(k % 2) for a in "ABC" for c in (1, 2) for k in range(4)}
    path = write_zip(tmp_path / "tiny.zip", members)
    args = ["train", "--out", str(tmp_path / "run")] + [a for o in TRAIN + [f"data.path={path}"] for a in ("--set", o)]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "knn_top1" not in err
    assert out.strip() == "knn_top1=n/a (train and test classes are disjoint)"
    assert not [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "knn_top1" in r]
