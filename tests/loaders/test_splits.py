"""ImageFolder splits at real scale: train and test must name the same classes, ImageNet's `val/` stands in
for a missing `test/`, and a bad file under the torchvision backend is a one-line error with the hint."""
import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.cli import main
from fastssl.config import Config, DataConfig
from fastssl.loaders.datasets import DataError, ImageFolderDataset, build_dataset, imagefolder
from fastssl.loaders.factory import build_eval_batches, build_train_loader

# A tiny, fast training run; the data options come with each test.
RUN = ["data.dataset=imagefolder", "data.image_size=16", "loader.batch_size=4", "train.max_steps=1",
       "train.precision=fp32", "train.device=cpu", "knn.k=2", "knn.every_epochs=0", "model.width=0.125",
       "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
       "method.loss_impl=reference"]


def tree(root: Path, classes, per_class: int = 4) -> Path:
    """root/<class>/<i>.png, each a distinct 16 x 16 RGB image."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.full((16, 16, 3), 20 * c + i, np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> Path:
    """PATH/train and PATH/test with classes a, b; PATH/bad lacks b and has c instead."""
    root = tmp_path_factory.mktemp("splits")
    tree(root / "train", "ab")
    tree(root / "test", "ab")
    tree(root / "bad", "ac")
    return root


def error_line(err: str, verb: str) -> str:
    """The CLI's one-line error, the last thing on stderr (train names its run directory first)."""
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"fastssl {verb}: error: ") and err.count("error") == 1 and "Traceback" not in err, err
    return last


def test_build_dataset_refuses_a_test_split_with_other_classes(splits):
    cfg = DataConfig(dataset="imagefolder", path=str(splits), test_split="bad")
    for split in ("train", "test"):   # either split: before any file of the other is read
        with pytest.raises(DataError) as err:
            build_dataset(cfg, split)
        message = str(err.value)
        assert "\n" not in message
        assert str(splits / "bad") in message and str(splits / "train") in message
        assert "missing from test: b" in message and "extra in test: c" in message


def test_long_class_lists_are_capped(tmp_path):
    names = [f"n{i:02d}" for i in range(25)]
    for name in names:
        (tmp_path / "train" / name).mkdir(parents=True)
    (tmp_path / "test" / "n00").mkdir(parents=True)
    with pytest.raises(DataError, match=r"missing from test: n01, .*, n10, \.\.\. \(24 in all\)\)$"):
        build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path)), "train")


def test_train_refuses_class_mismatch_before_any_work(splits, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out)] + [a for s in RUN + [f"data.path={splits}", "data.test_split=bad"]
                                           for a in ("--set", s)]
    assert main(argv) == 2
    assert "missing from test: b" in error_line(capsys.readouterr().err, "train")
    assert not (out / "last.pt").exists()


def test_eval_refuses_class_mismatch(splits, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--out", str(out)] + [a for s in RUN + [f"data.path={splits}"] for a in ("--set", s)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(out / "last.pt"), "--protocol", "knn", "--set", "data.test_split=bad"]) == 2
    assert "extra in test: c" in error_line(capsys.readouterr().err, "eval")
    assert not (out / "eval_knn.json").exists()


def test_val_stands_in_for_a_missing_default_test_split(tmp_path, caplog):
    tree(tmp_path / "train", "ab", per_class=1)
    tree(tmp_path / "val", "ab", per_class=1)
    cfg = DataConfig(dataset="imagefolder", path=str(tmp_path))
    with caplog.at_level(logging.WARNING):
        train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert test.root == tmp_path / "val" and test.classes == train.classes == ["a", "b"]
    said = [r.getMessage() for r in caplog.records if "val" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "val") in said[0]   # once, however often the splits are built


def test_explicit_val_split_still_works_quietly(tmp_path, caplog):
    tree(tmp_path / "train", "ab", per_class=1)
    tree(tmp_path / "val", "ab", per_class=1)
    with caplog.at_level(logging.WARNING):
        test = build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path), test_split="val"), "test")
    assert test.root == tmp_path / "val" and not caplog.records


def test_missing_test_split_names_both_and_suggests_the_option(tmp_path):
    tree(tmp_path / "train", "ab", per_class=1)
    tree(tmp_path / "holdout", "ab", per_class=1)
    with pytest.raises(DataError) as err:
        build_dataset(DataConfig(dataset="imagefolder", path=str(tmp_path)), "train")
    message = str(err.value)
    assert str(tmp_path / "test") in message and str(tmp_path / "val") in message
    assert "sub-folders there: holdout, train" in message and "--set data.test_split=NAME" in message


def test_build_dataset_refuses_a_class_folder_link_that_leads_nowhere(broken_class_links):
    """Passed over, train/b would give d label 1 in train and 2 in test: neither policy skips it, and the
    test split, which holds b, names it rather than a class mismatch."""
    for on_error, split in itertools.product(("raise", "skip"), ("train", "test")):
        cfg = DataConfig(dataset="imagefolder", path=str(broken_class_links["root"]), on_error=on_error)
        with pytest.raises(DataError) as err:
            build_dataset(cfg, split)
        assert str(err.value) == broken_class_links["message"]


def torchvision_cfg(workers: int) -> Config:
    cfg = Config()
    cfg.data.image_size = 16
    cfg.loader.backend, cfg.loader.batch_size, cfg.loader.workers = "torchvision", 4, workers
    return cfg


@pytest.mark.parametrize("workers", [0, 1])
def test_torchvision_bad_file_is_one_line_with_the_skip_hint(tmp_path, workers, cut_jpeg):
    tree(tmp_path, "a", per_class=3)
    bad = tmp_path / "a" / "x.jpg"
    bad.write_bytes(cut_jpeg)
    dataset = ImageFolderDataset(tmp_path)
    cfg = torchvision_cfg(workers)
    for batches in (build_train_loader(cfg.load_settings(), dataset, "cpu"), build_eval_batches(cfg.load_settings(), dataset, "cpu", batch_size=4)):
        with pytest.raises(DataError) as err:
            list(batches)
        message = str(err.value)
        assert "\n" not in message and str(bad) in message and "data.on_error=skip" in message


@pytest.mark.parametrize("workers", [0, 1])
def test_torchvision_skip_puts_the_next_good_file_in_a_bad_ones_place(tmp_path, workers, cut_jpeg):
    tree(tmp_path, "ab", per_class=3)
    (tmp_path / "a" / "x.jpg").write_bytes(cut_jpeg)   # index 3 of 7: a/0-2, a/x, b/0-2
    dataset = ImageFolderDataset(tmp_path, on_error="skip")
    cfg = torchvision_cfg(workers)
    cfg.loader.batch_size = 7
    batch, = list(build_train_loader(cfg.load_settings(), dataset, "cpu"))
    assert sorted(batch.index.tolist()) == [0, 1, 2, 4, 4, 5, 6]     # b/0 read in x.jpg's place
    assert batch.labels.tolist() == dataset.labels[batch.index.numpy()].tolist()
    images, labels = next(iter(build_eval_batches(cfg.load_settings(), dataset, "cpu", batch_size=7)))
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    torch.testing.assert_close(images[3], images[4])


def test_a_shard_is_every_world_th_image_from_rank_on_and_skips_within_itself(tmp_path, cut_jpeg):
    from fastssl.loaders.datasets.base import ArrayDataset, Shard

    images = np.arange(7)[:, None, None, None].repeat(2, 1).repeat(2, 2).repeat(3, 3).astype(np.uint8)
    shard = Shard(ArrayDataset(images, np.arange(7) % 3), 1, 3)
    assert len(shard) == 2 and shard.labels.tolist() == [1, 1]
    assert [np.asarray(shard.load_pil(i))[0, 0, 0] for i in range(2)] == [1, 4]
    assert shard.to_array(2)[:, 0, 0, 0].tolist() == [1, 4]
    tree(tmp_path, "ab", per_class=3)
    (tmp_path / "a" / "x.jpg").write_bytes(cut_jpeg)   # index 3 of 7: shard 1 of 2 holds 1, 3, 5
    folder = Shard(ImageFolderDataset(tmp_path, on_error="skip"), 1, 2)
    assert folder.load_usable(1)[1] == 2               # the shard's own next image, not index 4 of shard 0


def test_a_file_met_mid_run_is_warned_about_once_whichever_process_meets_it(tmp_path, cut_jpeg):
    """Under skip, a pixel-truncated file met in four epochs by both of the training loader's workers (the
    shuffle puts it in batch 4, 4, 2, then 1) and in four passes by the eval batches' own workers is
    named by one warning in all, not one per process that met it. Workers are processes, so the count
    comes from a log file they all append to."""
    tree(tmp_path / "data", "ab", per_class=3)
    bad = tmp_path / "data" / "a" / "x.jpg"
    bad.write_bytes(cut_jpeg)                          # index 3 of 7: a/0-2, a/x, b/0-2
    dataset = ImageFolderDataset(tmp_path / "data", on_error="skip")
    cfg = torchvision_cfg(workers=2)
    cfg.loader.batch_size = 1                          # batch b goes to worker b % 2
    said = tmp_path / "warnings.log"
    handler = logging.FileHandler(said)                # appends: every process's lines land in it
    logger = logging.getLogger(imagefolder.__name__)
    logger.addHandler(handler)
    try:
        train = build_train_loader(cfg.load_settings(), dataset, "cpu")
        evaluation = build_eval_batches(cfg.load_settings(), dataset, "cpu", batch_size=2)
        for epoch, at in enumerate([4, 4, 2, 1]):
            train.set_epoch(epoch)
            assert train.sampler.indices(epoch, at).tolist() == [3]
            assert sorted(i for b in train for i in b.index.tolist()) == [0, 1, 2, 4, 4, 5, 6]
            assert torch.cat([labels for _, labels in evaluation]).tolist() == [0, 0, 0, 1, 1, 1, 1]
    finally:
        logger.removeHandler(handler)
        handler.close()
    lines = said.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"image file {str(bad)!r}: cannot be decoded")
