"""Training on unlabelled images (data.dataset=images): every run trains, and the kNN monitor either
scores the labelled set knn.data names or says in one line why there is no score; never a crash."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

import fastssl
from fastssl.checkpoint import load_checkpoint
from fastssl.cli import main
from fastssl.engine.metrics import read_metrics
from fastssl.loaders.augment import IMAGENET_MEAN, IMAGENET_STD

SETS = ["data.image_size=32", "loader.batch_size=16", "train.max_steps=2", "train.precision=fp32", "knn.k=5",
        "model.projector_hidden=32", "model.projector_out=16"]
NO_LABELS = "knn_top1=n/a (no labelled data: set knn.data to a labelled ImageFolder to score the run)"


def _image(path, seed: int, size=(40, 36)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def nested(tmp_path):
    """40 good images three folders deep, a truncated JPEG and a text file named .jpg."""
    root = tmp_path / "frames"
    for i in range(40):
        _image(root / f"cam{i % 3}" / f"day{i % 2}" / f"{i:03d}.{'png' if i % 2 else 'jpg'}", i)
    good = (root / "cam0" / "day0" / "000.jpg").read_bytes()
    (root / "cam1" / "broken.jpg").write_bytes(good[:len(good) // 3])
    (root / "notes.jpg").write_text("not an image")
    return root


def _sets(values):
    return [f"--set={v}" for v in values]


def test_nested_unlabelled_folder_with_bad_files_trains_under_skip(nested, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *_sets(SETS + ["data.dataset=images", f"data.path={nested}",
                                                             "data.on_error=skip"])]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == NO_LABELS
    assert "frames: skipped 2 file(s) that cannot be decoded (first: " in caplog.text   # counted, the first named
    assert "broken.jpg" in caplog.text
    assert load_checkpoint(out / "last.pt")["run"]["step"] == 2
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [2] and not any("knn_top1" in r for r in records)


def test_nested_unlabelled_folder_under_raise_names_the_bad_file(nested, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"),
                 *_sets(SETS + ["data.dataset=images", f"data.path={nested}"])]) == 2
    assert re.search(r"image file '.*(broken|notes)\.jpg': cannot be decoded", capsys.readouterr().err)
    assert not (tmp_path / "run").exists()   # a refused run leaves no folder


def test_knn_data_scores_an_unlabelled_run_on_a_labelled_folder(nested, tmp_path, capsys):
    labelled = tmp_path / "labelled"
    for split, n in (("train", 12), ("test", 6)):
        for c in range(2):
            for i in range(n):
                _image(labelled / split / f"class{c}" / f"{i}.png", 1000 * c + 100 * (split == "test") + i)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *_sets(SETS + ["data.dataset=images", f"data.path={nested}",
                                                             "data.on_error=skip", f"knn.data={labelled}"])]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    final, start = map(float, re.fullmatch(r"knn_top1=(\d\.\d{4}) \(random init: (\d\.\d{4})\)", line).groups())
    scores = [r["knn_top1"] for r in read_metrics(out / "metrics.jsonl") if "knn_top1" in r]
    # 12 test images of 2 classes: every score is a multiple of 1/12
    assert scores == pytest.approx([start, final], abs=5e-5) and all(abs(s * 12 - round(s * 12)) < 1e-6 for s in scores)


def test_api_trains_a_torchvision_resnet_on_a_folder_and_embeds_it(nested, tmp_path):
    run = fastssl.train(out=tmp_path / "run", data=nested, model="torchvision/resnet18", method="simclr",
                        settings={"train.max_steps": 2, "loader.batch_size": 16, "data.on_error": "skip"})
    assert run.dir == tmp_path / "run" and run.knn_top1 is None and run.summary == NO_LABELS
    assert run.config.data.dataset == "images" and run.config.model.arch == "torchvision/resnet18"
    features = fastssl.features(run, nested)
    assert features.values.shape == (40, 512) and np.isfinite(features.values).all()
    assert all(p.name not in ("broken.jpg", "notes.jpg") for p in features.paths) and not features.labels.any()
    # The features are the encoder's on the same images, in the listed order
    first = np.asarray(Image.open(features.paths[0]).convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)   # the eval transform's
    x = torch.from_numpy(((first - mean) / std).transpose(2, 0, 1)[None].copy())
    with torch.no_grad():
        expected = run.encoder()(x)[0].numpy()
    np.testing.assert_allclose(features.values[0], expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(fastssl.DataError, match="is unlabelled: it has no test split"):
        fastssl.features(run, split="test")


@pytest.mark.parametrize("method", ["contrastive", "protonet", "r2d2", "svm", "byol", "moco", "simsiam"])
def test_every_method_trains_on_unlabelled_images(method, nested, tmp_path):
    """No method reads labels: each image is its own class, whatever the dataset says."""
    settings = {"data.on_error": "skip", "loader.batch_size": 16, "train.max_steps": 2, "train.log_every": 1,
                "train.precision": "fp32", "model.projector_hidden": 32, "model.projector_out": 16,
                "method.moco.queue_size": 32}
    run = fastssl.train(out=tmp_path / "run", data=nested, method=method, settings=settings)
    losses = [r["loss"] for r in run.metrics if "loss" in r]
    assert len(losses) == 2 and np.isfinite(losses).all() and run.knn_top1 is None


def test_an_unlabelled_folder_trains_exactly_as_the_same_files_in_one_class_folder(tmp_path):
    """No method reads labels, and both listings give the files in code-point order: the same images as
    data.dataset=images (a nested folder) and as an ImageFolder of one class train to identical weights."""
    root = tmp_path / "imagefolder"
    for i in range(32):
        _image(root / "train" / "only" / f"{i:02d}.png", i)
    for i in range(4):
        _image(root / "test" / "only" / f"{i}.png", 100 + i)
    settings = {"loader.batch_size": 16, "train.max_steps": 2, "train.precision": "fp32", "knn.k": 2,
                "model.projector_hidden": 32, "model.projector_out": 16}
    unlabelled = fastssl.train(out=tmp_path / "a", data=root / "train" / "only", settings=settings)
    labelled = fastssl.train(out=tmp_path / "b", settings={**settings, "data.dataset": "imagefolder",
                                                          "data.path": str(root)})
    a, b = (load_checkpoint(run.dir / "last.pt")["model"] for run in (unlabelled, labelled))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
