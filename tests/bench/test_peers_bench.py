"""`fastssl bench peers`: the step clock, the recipe's translation, the plan, and a tiny real run of
lightly, LightlyTrain and fastssl whose backbones, features and kNN are checked independently."""
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl import config as config_mod
from fastssl.bench import peers_bench
from fastssl.bench.peers import fastssl_runner, runners
from fastssl.bench.peers.clock import StepClock, quantile, summarize, window_rates
from fastssl.bench.peers.evaluate import load_backbone
from fastssl.bench.peers.network import backbone
from fastssl.bench.peers.recipe import Recipe, Spec
from fastssl.cli import main
from fastssl.loaders.rules import ConfigError
from fastssl.optim.lars import LARS


def test_window_rates_and_summary_from_step_times():
    times = [10.0, 11.0, 11.5, 12.0, 13.0, 13.5, 14.5]   # step ends; launched at 8.0
    # after the first step, 5 intervals: two whole windows of 2 (11 -> 12, 12 -> 13.5); the last one is cut
    assert window_rates(times, batch=4, skip=1, window=2) == [4 * 2 / 1.0, 4 * 2 / 1.5]
    out = summarize(times, batch=4, launched=8.0, skip=1, window=2)
    assert out["first_step_s"] == 2.0 and out["steps"] == 7 and out["windows"] == 2
    assert out["ips_median"] == pytest.approx((8 + 8 / 1.5) / 2)
    values = [3.0, 1.0, 7.0, 4.0, 10.0]
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert quantile(values, q) == pytest.approx(np.percentile(values, q * 100))


def test_clock_counts_every_optimizer_step_of_any_optimizer():
    model = torch.nn.Linear(3, 1)
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.1), LARS(model.parameters(), lr=0.1)]
    clock = StepClock().start()
    for step in range(6):
        model(torch.randn(2, 3)).sum().backward()
        optimizers[step % 2].step()
    clock.stop()
    optimizers[0].step()   # after stop: not counted
    assert len(clock.times) == 6 and clock.times == sorted(clock.times)


def test_step_profiler_covers_exactly_the_asked_steps(tmp_path):
    from fastssl.bench.peers.profiler import StepProfiler

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    profiler = StepProfiler(tmp_path, start_after=2, steps=3)
    clock = StepClock().start()   # a second hook: the profiler must not unregister itself mid-iteration
    for step in range(8):
        loss = model(torch.randn(4, 3)).sum()
        loss.backward()
        optimizer.step()
    clock.stop()
    profiler.finish()   # already written at step 5; only unregisters
    assert len(clock.times) == 8
    text = (tmp_path / "profile.txt").read_text()
    assert text.startswith("torch.profiler over optimizer steps 3..5")
    assert "aten::addmm" in text and "Optimizer.step#SGD.step" in text
    counted = [line.split() for line in text.splitlines() if line.strip().startswith("Optimizer.step#SGD.step")]
    assert counted and counted[0][-1] == "3"   # the last column: calls; steps 3, 4 and 5


def test_fastssl_overrides_are_the_recipe(tmp_path):
    recipe = Recipe(method="byol", width=0.25, batch=64, epochs=5, seed=2)
    spec = Spec(peer="fastssl", recipe=recipe, data=str(tmp_path), out="/out", backend="torchvision")
    cfg = config_mod.load_config(None, fastssl_runner.overrides(spec))
    assert (cfg.data.dataset, cfg.data.path, cfg.loader.backend) == ("imagefolder", str(tmp_path), "torchvision")
    assert (cfg.loader.batch_size, cfg.train.epochs, cfg.train.seed, cfg.model.width) == (64, 5, 2, 0.25)
    # BYOL at the paper's loss scale runs at half the recipe's lr and twice its weight decay: with SGD the
    # committed rows' updates (trained with the half-scale loss at the recipe's values)
    assert cfg.optim.name == "sgd" and cfg.optim.lr == pytest.approx(0.06 * 64 / 128 / 2)
    assert cfg.optim.warmup_epochs == pytest.approx(0.5) and cfg.optim.weight_decay == pytest.approx(2 * 5e-4)
    assert (cfg.augment.crop_scale_min, cfg.augment.hue, cfg.augment.blur_p) == (0.2, 0.1, [0.0])
    assert cfg.method.name == "byol" and cfg.method.byol == {"momentum": 0.99, "predictor_hidden": 512}


def test_plan_lists_what_is_not_run_and_puts_seeds_outermost(tmp_path):
    pytest.importorskip("lightly")
    specs, skipped = peers_bench.plan(["fastssl", "lightly"], ["simclr", "moco"], ["tensor", "torchvision"], [0.125],
                                      2, Recipe(), "/data", tmp_path, "")
    assert [(s.name, s.recipe.method, s.recipe.seed) for s in specs] == [
        ("fastssl:tensor", "simclr", 0), ("fastssl:torchvision", "simclr", 0), ("lightly", "simclr", 0),
        ("fastssl:tensor", "simclr", 1), ("fastssl:torchvision", "simclr", 1), ("lightly", "simclr", 1)]
    assert [(r.trainer, r.method, r.reason) for r in skipped] == [
        ("fastssl:tensor", "moco", "fastssl's runner covers simclr, byol, not moco"),
        ("fastssl:torchvision", "moco", "fastssl's runner covers simclr, byol, not moco"),
        ("lightly", "moco", "lightly's runner covers simclr, byol, not moco")]
    with pytest.raises(ConfigError, match="--peers nope: must be among fastssl, lightly, lightly-train, solo-learn"):
        peers_bench.plan(["nope"], ["simclr"], ["tensor"], [1.0], 1, Recipe(), "/data", tmp_path, "")


def test_a_peer_without_its_package_is_a_row_that_says_how_to_install_it(tmp_path, monkeypatch):
    from importlib.metadata import PackageNotFoundError

    import fastssl.bench.peers as peers

    real = peers.version

    def version(name):
        if name == "lightly":
            raise PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(peers, "version", version)
    specs, skipped = peers_bench.plan(["lightly"], ["simclr"], [], [1.0], 1, Recipe(), "/data", tmp_path, "")
    assert specs == [] and [(r.trainer, r.status, r.reason, r.version) for r in skipped] == [
        ("lightly", "not run", "lightly is not installed: pip install 'fastssl[peers]'", "not installed")]


def test_spec_round_trip(tmp_path):
    spec = Spec(peer="lightly", recipe=Recipe(width=0.5, jitter=(0.1, 0.2, 0.3, 0.05)), data="/d", out="/o",
                substitutions=["x"])
    spec.save(tmp_path / "spec.json")
    assert Spec.load(tmp_path / "spec.json") == spec


def test_core_and_bench_planning_import_no_peer():
    code = ("import sys, fastssl.cli, fastssl.engine.trainer, fastssl.bench.peers_bench\n"
            "from fastssl.bench.peers import runners\n"
            "names = sorted(runners())\n"
            "loaded = [m for m in ('lightly', 'lightly_train', 'solo') if m in sys.modules]\n"
            "print(names, loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['fastssl', 'lightly', 'lightly-train', 'solo-learn'] []"


def _independent_features(net, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """h of every image of an ImageFolder split, by PIL + numpy normalisation (32 px images: no resize)."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255
            images.append(((pixels - mean) / std).transpose(2, 0, 1))
            labels.append(label)
    with torch.no_grad():
        features = net.eval()(torch.tensor(np.stack(images), dtype=torch.float32))
    return features.numpy(), np.array(labels)


def _knn_top1(train_x, train_y, test_x, test_y, k, temperature, classes=10):
    """Weighted kNN vote exp(cos / T) over the k most similar train features."""
    bank = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    queries = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    sims = queries.astype(np.float64) @ bank.T.astype(np.float64)
    top = np.argsort(-sims, axis=1)[:, :k]
    votes = np.zeros((len(queries), classes))
    for i, row in enumerate(top):
        np.add.at(votes[i], train_y[row], np.exp(sims[i, row] / temperature))
    return float((votes.argmax(1) == test_y).mean())


def test_tiny_bench_runs_each_trainer_and_one_evaluator_scores_them(cifar10_jpeg_root, tmp_path):
    pytest.importorskip("lightly")
    # find_spec, not an import: importing lightly_train sets PIL's LOAD_TRUNCATED_IMAGES for the whole process
    lightly_train = importlib.util.find_spec("lightly_train") is not None   # not in the test extra (setup.py)
    out = tmp_path / "peers"
    args = ["bench", "peers", "--data", str(cifar10_jpeg_root), "--peers", "fastssl,lightly,lightly-train,solo-learn",
            "--backends", "tensor", "--methods", "simclr", "--width", "0.125", "--batch", "32", "--epochs", "1",
            "--limit-train", "8", "--limit-test", "4", "--skip", "0", "--window", "1", "--no-probe",
            "--work", str(tmp_path / "work"), "--out", str(out)]
    stale = tmp_path / "work" / "runs" / "fastssl-tensor_simclr_w0.125_s0" / "run"   # an interrupted attempt
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text('{"step": 99, "knn_top1": 0.99}\n')
    assert main(args) == 0
    assert "0.99" not in (stale / "metrics.jsonl").read_text()   # trained afresh, not on top of it
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = {r["trainer"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"fastssl:tensor", "lightly", "lightly-train", "solo-learn"}
    data = tmp_path / "work" / "data_8_4"
    recipe = Recipe(width=0.125, batch=32, epochs=1)
    fresh = backbone(recipe).state_dict()
    trained = [("fastssl:tensor", "fastssl-tensor"), ("lightly", "lightly")]
    if lightly_train:
        trained.append(("lightly-train", "lightly-train"))
    else:
        assert (rows["lightly-train"]["status"], rows["lightly-train"]["reason"]) == (
            "not run", "lightly-train is not installed: pip install 'fastssl[peers]'")
    for name, folder in trained:
        row = rows[name]
        assert row["status"] == "ok", row["reason"]
        assert int(row["steps"]) == 80 // 32 and float(row["ips_median"]) > 0   # 8 images x 10 classes, drop_last
        run = tmp_path / "work" / "runs" / f"{folder}_simclr_w0.125_s0"
        net = load_backbone(run / "backbone.pt", recipe)   # strict into the common torchvision network
        assert any(not torch.equal(v, fresh[k]) for k, v in net.state_dict().items() if v.is_floating_point())
        for split in ("train", "test"):
            mine, labels = _independent_features(net, data / split)
            np.testing.assert_allclose(np.load(run / f"{split}_features.npy"), mine, rtol=1e-4, atol=1e-4)
            assert np.array_equal(np.load(run / f"{split}_labels.npy"), labels)
        top1 = _knn_top1(np.load(run / "train_features.npy"), np.load(run / "train_labels.npy"),
                         np.load(run / "test_features.npy"), np.load(run / "test_labels.npy"), k=200, temperature=0.1)
        assert float(row["knn_top1"]) == pytest.approx(top1, abs=1e-6)   # the evaluator averages in float32
        assert json.loads((run / "result.json").read_text())["version"] == row["version"]
    assert rows["lightly"]["version"] == "1.6.0"
    assert rows["lightly-train"]["version"] == ("0.18.0" if lightly_train else "not installed")
    solo = rows["solo-learn"]
    assert solo["status"] == "not run" and ("torch==1.9.1" in solo["reason"] or "does not import" in solo["reason"])
    table = out.with_suffix(".md").read_text()
    assert "| lightly 1.6.0 | simclr | 0.125 |" in table and "solo-learn simclr (width 0.125): not run" in table
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_without_a_test_split_is_refused_before_any_training(tmp_path, capsys):
    (tmp_path / "train" / "a").mkdir(parents=True)
    assert main(["bench", "peers", "--data", str(tmp_path), "--work", str(tmp_path / "w"),
                 "--out", str(tmp_path / "o")]) == 2
    assert (f"--data {tmp_path}: has no test/ folder; it must hold train/<class>/ and test/<class>/"
            in capsys.readouterr().err)
    assert not (tmp_path / "w").exists()
