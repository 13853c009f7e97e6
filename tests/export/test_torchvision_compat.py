"""fastssl's ResNet as torchvision's: the walked key map, strict loading, and equal features, untrained models
with random BN statistics (trained checkpoints go through the CLI in test_export_cli.py)."""
import pytest
import torch
import torchvision
from torch import nn

import fastssl.models
from fastssl.config import load_config
from fastssl.export.formats import torchvision as torchvision_format
from fastssl.export.networks import Exported
from fastssl.models import ResNet
from fastssl.models.torchvision_compat import copy_to_torchvision, key_map, torchvision_resnet

ARCHS = ("resnet18", "resnet34", "resnet50")


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval mode with non-trivial BN statistics and affine parameters (a fresh model's are 0/1, and the
    last BN of every block starts at gamma = 0, which would hide a wrongly paired residual branch)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
            m.num_batches_tracked.fill_(7)
    return model.eval()


def _images(cifar_stem: bool) -> torch.Tensor:
    side = 32 if cifar_stem else 64   # the ImageNet stem divides by 4: 64 leaves 2x2 at the last stage
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(1))


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to float32 rounding: relative to the features' magnitude (they reach ~100 with random BN)."""
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("width", [0.125, 0.3])
@pytest.mark.parametrize("cifar_stem", [True, False], ids=["cifar", "imagenet"])
@pytest.mark.parametrize("arch", ARCHS)
def test_scaled_widths_give_the_same_features(arch, cifar_stem, width):
    """0.3 rounds each stage on its own (19, 38, 77, 154 planes): the stem and stages must follow fastssl's."""
    ours = _randomized(ResNet(arch, cifar_stem=cifar_stem, width=width))
    theirs = copy_to_torchvision(ours, fastssl.models.torchvision_resnet(arch, cifar_stem=cifar_stem, width=width))
    assert isinstance(theirs, torchvision.models.ResNet)
    block = torchvision.models.resnet.Bottleneck if arch == "resnet50" else torchvision.models.resnet.BasicBlock
    assert all(isinstance(b, block) for b in theirs.layer1)
    assert theirs.conv1.stride == ((1, 1) if cifar_stem else (2, 2))
    assert isinstance(theirs.maxpool, nn.Identity) == cifar_stem and isinstance(theirs.fc, nn.Identity)
    keys, mapped = key_map(ours, theirs), theirs.state_dict()
    assert sorted(keys) == sorted(ours.state_dict()) and sorted(keys.values()) == sorted(mapped)   # one to one
    assert all(torch.equal(value, mapped[keys[key]]) for key, value in ours.state_dict().items())
    x = _images(cifar_stem)
    with torch.no_grad():
        _close(theirs.eval()(x), ours(x))


@pytest.mark.parametrize("cifar_stem", [True, False], ids=["cifar", "imagenet"])
@pytest.mark.parametrize("arch", ARCHS)
def test_width_one_loads_strictly_into_torchvisions_own_constructor(arch, cifar_stem):
    """torchvision.models.resnetXX(), its stem adapted here by hand, takes the exported state dict with
    strict=True and computes fastssl's features."""
    ours = _randomized(ResNet(arch, cifar_stem=cifar_stem, width=1.0))
    state = copy_to_torchvision(ours, torchvision_resnet(arch, cifar_stem=cifar_stem)).state_dict()
    reference = getattr(torchvision.models, arch)(weights=None)
    if cifar_stem:
        reference.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        reference.maxpool = nn.Identity()
    reference.fc = nn.Identity()
    reference.load_state_dict(state, strict=True)
    x = _images(cifar_stem)
    with torch.no_grad():
        _close(reference.eval()(x), ours(x))


def test_key_map_refuses_trees_that_do_not_pair():
    with pytest.raises(ValueError, match=r"fastssl module stages\.1\.0\.residual\.0 .* no torchvision counterpart"):
        key_map(ResNet("resnet18", width=0.125), torchvision_resnet("resnet34", cifar_stem=True, width=0.125))
    with pytest.raises(ValueError, match="stride"):   # same layers, other stem: the constructor arguments differ
        key_map(ResNet("resnet18", cifar_stem=True, width=0.125),
                torchvision_resnet("resnet18", cifar_stem=False, width=0.125))
    with pytest.raises(ValueError, match="arch='resnet101': must be one of resnet18, resnet34, resnet50"):
        torchvision_resnet("resnet101", cifar_stem=True)


def test_width_one_file_loads_into_torchvision_by_its_own_instructions(tmp_path):
    """The torchvision format at width 1.0 names torchvision's constructor and the assignments that adapt it:
    following them literally gives a model that loads the file strictly and computes fastssl's features."""
    cfg = load_config(None, ["model.width=1.0", "model.cifar_stem=true"])
    ours = _randomized(ResNet("resnet18", cifar_stem=True, width=1.0))
    lines = torchvision_format.write(Exported(ours, cfg, "encoder", {"stem": "cifar"}, _images(True)),
                                     tmp_path / "r18.pt")
    saved = torch.load(tmp_path / "r18.pt", weights_only=True)
    assert saved["metadata"]["build"] == "torchvision.models.resnet18()" and "check: max abs error" in lines[-1]
    model = torchvision.models.resnet18()
    exec(saved["metadata"]["adapt"], {"nn": nn, "model": model})
    model.load_state_dict(saved["state_dict"], strict=True)
    x = 2 * _images(True)   # not the batch the exporter checked on
    with torch.no_grad():
        _close(model.eval()(x), ours(x))
