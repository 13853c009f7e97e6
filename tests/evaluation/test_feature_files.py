"""`fastssl features`: the files hold the encoder's features in the dataset's order, and a kNN written
here in a few lines of numpy scores them exactly as `fastssl eval --protocol knn` does."""
import json

import numpy as np
import pytest
import torch

from fastssl.cli import main
from fastssl.config import load_config
from fastssl.evaluation.features import load_run
from fastssl.loaders.datasets import build_dataset
from fastssl.loaders.factory import IMAGENET_MEAN, IMAGENET_STD, eval_transform

def numpy_knn_top1(bank, bank_labels, queries, labels, k, temperature):
    """Weighted kNN in float64: votes exp(cos / T) over the k most similar train rows."""
    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    cos = unit(queries.astype(np.float64)) @ unit(bank.astype(np.float64)).T
    nearest = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(queries), bank_labels.max() + 1))
    for row, columns in enumerate(nearest):
        np.add.at(votes[row], bank_labels[columns], np.exp(cos[row, columns] / temperature))
    return float((votes.argmax(1) == labels).mean())


def test_features_give_evals_knn_accuracy(run_dir, capsys):
    assert main(["features", str(run_dir)]) == 0
    out = run_dir / "features"
    assert capsys.readouterr().out.strip().endswith(f"-> {out}")
    arrays = {name: np.load(out / f"{name}.npy") for name in
              ("train_features", "train_labels", "test_features", "test_labels")}
    assert arrays["train_features"].shape == (512, 64) and arrays["train_features"].dtype == np.float32
    assert arrays["test_features"].shape == (256, 64) and arrays["test_labels"].dtype == np.int64
    cfg = load_config(run_dir / "config.yaml")
    for split in ("train", "test"):   # rows in the dataset's order
        assert np.array_equal(arrays[f"{split}_labels"], np.asarray(build_dataset(cfg.data, split).labels))
    mine = numpy_knn_top1(arrays["train_features"], arrays["train_labels"], arrays["test_features"],
                          arrays["test_labels"], k=20, temperature=cfg.knn.temperature)
    assert main(["eval", "--ckpt", str(run_dir / "last.pt"), "--protocol", "knn"]) == 0
    theirs = json.loads((run_dir / "eval_knn.json").read_text())["results"]["top1"]
    assert mine == pytest.approx(theirs, abs=1e-6)   # 1e-6: theirs is float32; one image is 4e-3
    record = json.loads((out / "features.json").read_text())
    assert record["step"] == 2 and record["splits"]["test"] == {
        "features": "test_features.npy", "labels": "test_labels.npy", "rows": 256, "dim": 64}
    assert not list(out.glob("*.tmp"))


def test_features_equal_the_encoder_on_the_images(run_dir, tmp_path):
    """One split on other data (another seed of the generator): its own folder, rows = f(x) of each image."""
    assert main(["features", str(run_dir), "--split", "test", "--set", "data.seed=7", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.json", "test_features.npy", "test_labels.npy"]

    run = load_run(run_dir / "last.pt", ["data.seed=7"])
    dataset = run.dataset("test")
    images = torch.from_numpy(dataset.to_array(32)[:5])
    with torch.no_grad():
        expected = run.encoder(eval_transform(images, 32, IMAGENET_MEAN, IMAGENET_STD))
    np.testing.assert_allclose(np.load(tmp_path / "test_features.npy")[:5], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_a_folder_without_a_checkpoint_is_named(tmp_path, capsys):
    assert main(["features", str(tmp_path)]) == 2
    assert f"checkpoint {str(tmp_path / 'last.pt')!r}: does not exist" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["features.npy", "taken"])
def test_an_out_that_is_a_file_is_refused_before_any_work(run_dir, tmp_path, capsys, name):
    """Two arrays per split need a folder: `--out features.npy` would otherwise become a folder of that name."""
    (tmp_path / "taken").write_text("keep me")
    assert main(["features", str(run_dir), "--out", str(tmp_path / name)]) == 2
    assert f"--out {tmp_path / name}: must be a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"] and (tmp_path / "taken").read_text() == "keep me"
