"""Every backbone family trains, resumes bitwise and exports a file its own library loads strict.

Families: fastssl's ResNet, a torchvision ResNet (CIFAR stem), a timm ViT at 32 px in 4x4 patches and a
timm ResNet, and a user's nn.Module through the Python API. Each run is tiny (4 steps of 32 images on
the embedded data) so the suite stays short; the independent references are the libraries' own
constructors (torchvision.models, timm.create_model) and a straight run for the resumed one.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

import fastssl
from fastssl.checkpoint import load_checkpoint
from fastssl.cli import main
from fastssl.engine.trainer import Trainer
from fastssl.export.exporter import export
from fastssl.api import build_config
from fastssl.models import build_model, torchvision_resnet

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

TINY = {"data.num_train": 128, "data.num_test": 64, "loader.batch_size": 32, "train.epochs": 1,
        "train.ckpt_every": 2, "train.precision": "fp32", "knn.k": 5, "knn.every_epochs": 0,
        "model.projector_hidden": 32, "model.projector_out": 16}
VIT = {"model.arch": "timm/vit_tiny_patch16_224", "model.kwargs": {"img_size": 32, "patch_size": 4, "depth": 2}}
# One block of width 48: the tests that only need some ViT, at a quarter of the cost
SMALL_VIT = {**VIT, "model.kwargs": {"img_size": 32, "patch_size": 4, "depth": 1, "embed_dim": 48, "num_heads": 3}}
FAMILIES = {
    "fastssl-resnet18": {"model.arch": "resnet18"},
    "torchvision-resnet18": {"model.arch": "torchvision/resnet18"},
    "timm-vit-tiny": VIT,
    "timm-resnet10t": {"model.arch": "timm/resnet10t"},
}


class SmallNet(nn.Module):
    """A user's own network: images -> (B, 24) features. It starts from the weights it holds (fastssl does not
    re-initialise a user's module), so each instance here is made from the same seed."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(7)
        self.body = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.BatchNorm2d(24), nn.ReLU(), nn.Conv2d(24, 24, 3, 2, 1),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.body(x)


def _cfg(extra: dict):
    return build_config(settings={**TINY, **extra})


def _weights(run_dir):
    state = load_checkpoint(run_dir / "last.pt")
    return {f"{part}.{k}": v for part in ("model", "method") for k, v in state[part].items()}


def _assert_equal_weights(a, b):
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_resumes_bitwise_and_exports_into_its_library(family, tmp_path, crash_after_first_checkpoint):
    cfg = _cfg(FAMILIES[family])
    straight = Trainer(cfg, tmp_path / "straight").fit()
    assert straight.steps == 4 and torch.isfinite(torch.tensor(straight.knn_top1))
    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed"))
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["run"]["step"] == 2
    Trainer(cfg, tmp_path / "resumed", resume=True).fit()
    _assert_equal_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))

    # Training moved the encoder away from a fresh build with the same seed.
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg.model, image_size=32).encoder.state_dict()
    trained = fastssl.load(tmp_path / "straight").encoder()
    assert any(not torch.equal(v, trained.state_dict()[k]) for k, v in fresh.items() if v.is_floating_point())

    path, lines = export(tmp_path / "straight")
    saved = torch.load(path, weights_only=True)
    library = _library_model(cfg.model)
    library.load_state_dict(saved["state_dict"])   # strict
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(library.eval()(images), trained(images), atol=1e-5, rtol=1e-5)
    assert "max abs error" in lines[-1]
    # The other formats of the same network: each compares the file it wrote with the network before it lands
    for fmt in ("safetensors", "torchscript"):
        written, lines = export(tmp_path / "straight", fmt)
        assert written.is_file() and any(re.match(r"check: max abs error \S+ vs fastssl.s network on 3 images", line)
                                         for line in lines)


def _library_model(model_cfg) -> nn.Module:
    """The library's own model for the run's arch, built here from the library's documented API."""
    arch = model_cfg.arch
    if arch.startswith("timm/"):
        return timm.create_model(arch.removeprefix("timm/"), num_classes=0, **model_cfg.kwargs)
    if not arch.startswith("torchvision/"):   # fastssl's own ResNet exports into torchvision's class at its width
        return torchvision_resnet(arch, cifar_stem=True, width=model_cfg.width)
    model = getattr(torchvision.models, arch.removeprefix("torchvision/"))()
    model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)   # 32 px: the CIFAR stem
    model.maxpool = model.fc = nn.Identity()
    return model


def test_users_module_trains_resumes_and_exports_through_the_api(tmp_path, crash_after_first_checkpoint):
    settings = {**TINY, "method.name": "byol"}
    straight = fastssl.train(out=tmp_path / "straight", model=SmallNet(), settings=settings)
    assert straight.config.model.arch == "module" and straight.knn_top1 is not None
    cfg = build_config(model=SmallNet(), settings=settings)
    crash_after_first_checkpoint(Trainer(cfg, tmp_path / "resumed", module=SmallNet()))
    fastssl.train(out=tmp_path / "resumed", model=SmallNet(), resume=True)
    _assert_equal_weights(_weights(tmp_path / "straight"), _weights(tmp_path / "resumed"))

    encoder = fastssl.load(tmp_path / "straight", model=SmallNet()).encoder()
    assert isinstance(encoder, SmallNet)
    path, _ = export(tmp_path / "straight", module=SmallNet())   # a user's module: safetensors by default
    from safetensors.torch import load_file
    mine = SmallNet()
    mine.load_state_dict(load_file(path))   # strict, into the user's own class
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(mine.eval()(images), encoder(images), atol=1e-6)   # layouts differ, not weights
    # Without the module, a reader says how to read the run; it does not crash.
    with pytest.raises(fastssl.ConfigError, match="fastssl.load"):
        fastssl.load(tmp_path / "straight").encoder()
    assert main(["export", str(tmp_path / "straight")]) == 2


@pytest.mark.parametrize("method", ["byol", "moco", "mocov3", "dino", "swav", "simsiam", "protonet", "r2d2", "svm"])
def test_every_method_trains_a_vit(method, tmp_path):
    """The momentum networks (BYOL, MoCo, MoCo v3, DINO's teacher) copy whatever family built the online network."""
    few_prototypes = {f"method.{method}.prototypes": 64} if method in ("dino", "swav") else {}   # not 65,536
    run = fastssl.train(out=tmp_path / "run", settings={**TINY, **SMALL_VIT, "method.name": method, "train.ckpt_every": 0,
                                                        "train.max_steps": 2, "train.log_every": 1, **few_prototypes})
    losses = [r["loss"] for r in run.metrics if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    state = load_checkpoint(run.dir / "last.pt")
    assert state["run"]["step"] == 2 and state["config"]["method"]["name"] == method


def test_vit_trains_compiled_in_bf16_channels_last_as_eager(tmp_path):
    """torch.compile, bf16 autocast and channels-last views with a timm ViT: the compiled run's losses equal
    the eager run's within bf16 rounding (one block, 2 steps, logged each step)."""
    settings = {**TINY, **SMALL_VIT, "train.precision": "bf16", "train.max_steps": 2, "train.ckpt_every": 0,
                "train.log_every": 1}
    losses = {}
    for compiled in (False, True):
        run = fastssl.train(out=tmp_path / str(compiled), settings={**settings, "train.compile": compiled})
        losses[compiled] = [r["loss"] for r in run.metrics if "loss" in r]
    assert len(losses[True]) == 2 and torch.isfinite(torch.tensor(losses[True])).all()
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=2e-2, atol=2e-2)


def test_the_api_and_the_cli_write_identical_checkpoints(tmp_path):
    sets = {**TINY, **SMALL_VIT, "train.max_steps": 2}
    api_run = fastssl.train(out=tmp_path / "api", model=sets.pop("model.arch"), method="simclr", settings=sets)
    kwargs = "{" + ", ".join(f"{k}: {v}" for k, v in sets.pop("model.kwargs").items()) + "}"
    cli_sets = [f"--set={k}={v}" for k, v in sets.items()] + [f"--set=model.kwargs={kwargs}", "--set=method.name=simclr",
                                                              f"--set=model.arch={SMALL_VIT['model.arch']}"]
    assert main(["train", "--out", str(tmp_path / "cli"), *cli_sets]) == 0
    _assert_equal_weights(_weights(api_run.dir), _weights(tmp_path / "cli"))
    assert (api_run.dir / "config.yaml").read_text() == (tmp_path / "cli" / "config.yaml").read_text()


MULTI_CROP = {"loader.views": 4, "task.n_query": 3, "method.name": "dino", "method.dino.prototypes": 64,
              "augment.crops": [{"views": 2, "size": 32}, {"views": 2, "size": 16}]}


def test_a_vit_takes_multi_crop_views_with_timm_s_dynamic_image_size(tmp_path):
    """DINO's usual network: a ViT built for 32 px refuses 16 px local views before training, naming the
    kwarg that fixes it; with it, every step's encoder sees both sizes and the losses are finite."""
    with pytest.raises(fastssl.ConfigError, match="does not take 16x16 images .*dynamic_img_size: true"):
        fastssl.train(out=tmp_path / "fixed", settings={**TINY, **SMALL_VIT, **MULTI_CROP, "train.max_steps": 1})
    kwargs = {**SMALL_VIT["model.kwargs"], "dynamic_img_size": True}
    settings = {**TINY, **SMALL_VIT, **MULTI_CROP, "train.max_steps": 2, "train.ckpt_every": 0, "train.log_every": 1,
                "model.kwargs": kwargs}
    trainer = Trainer(build_config(settings=settings), tmp_path / "dynamic")
    sides = []   # the online encoder's inputs in training (the kNN monitor's are in eval mode)

    def record(module, args) -> None:
        if module.training:
            sides.append(args[0].shape[-1])
    trainer.model.encoder.patch_embed.register_forward_pre_hook(record)
    trainer.fit()
    losses = [r["loss"] for r in fastssl.load(tmp_path / "dynamic").metrics if "loss" in r]
    assert sides == [32, 16, 32, 16] and len(losses) == 2 and all(map(math.isfinite, losses))
