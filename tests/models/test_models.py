"""Encoder and projector: torchvision as the independent reference for the architecture, exact
checks for layouts, zero-init residuals and the projector's layers."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from fastssl.config import ModelConfig
from fastssl.models import SSLNet, build_model, build_projector
from fastssl.models.projector import Projector
from fastssl.models.resnet import BasicBlock, Bottleneck, ResNet

ARCHS = ("resnet18", "resnet34", "resnet50")
FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def torchvision_trunk(arch: str) -> nn.Module:
    """torchvision's ResNet without its classifier (fc)."""
    model = getattr(torchvision.models, arch)(weights=None)
    model.fc = nn.Identity()
    return model


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN affine and running stats, so that every layer changes the numbers."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=g)
            m.bias.data = 0.1 * torch.randn(c, generator=g)
            m.running_mean = 0.1 * torch.randn(c, generator=g)
            m.running_var = 0.5 + torch.rand(c, generator=g)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_imagenet_stem_matches_torchvision_parameters(arch):
    ours, ref = ResNet(arch, cifar_stem=False, width=1.0), torchvision_trunk(arch)
    assert n_params(ours) == n_params(ref)
    assert sorted(tuple(p.shape) for p in ours.parameters()) == sorted(tuple(p.shape) for p in ref.parameters())
    assert ours.feature_dim == FEATURE_DIM[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_cifar_stem_swaps_7x7_conv_for_3x3(arch):
    expected = n_params(torchvision_trunk(arch)) - 64 * 3 * 7 * 7 + 64 * 3 * 3 * 3
    assert n_params(ResNet(arch, cifar_stem=True, width=1.0)) == expected


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("width, first", [(0.125, 8), (0.5, 32), (0.3, 19)])
def test_width_scales_channels(arch, width, first):
    model = ResNet(arch, width=width)
    assert model.stem[0].out_channels == first
    expansion = 4 if arch == "resnet50" else 1
    assert model.feature_dim == round(512 * width) * expansion


def test_tiny_width_keeps_one_channel():
    model = ResNet("resnet18", width=0.001)
    assert model.stem[0].out_channels == 1 and model.feature_dim == 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("cifar_stem, side, final_side", [(True, 32, 4), (False, 64, 2)])
def test_output_shapes(arch, cifar_stem, side, final_side):
    model = ResNet(arch, cifar_stem=cifar_stem, width=0.125).eval()
    x = torch.randn(3, 3, side, side)
    with torch.no_grad():
        assert model.stages(model.stem(x)).shape[-2:] == (final_side, final_side)
        h = model(x)
    assert h.shape == (3, model.feature_dim) == (3, FEATURE_DIM[arch] // 8)


def test_kaiming_fan_out_init():
    conv = ResNet("resnet18", width=1.0).stages[3][1].residual[0]  # 512 -> 512, 3x3
    expected = (2.0 / (512 * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert conv.weight.mean().item() == pytest.approx(0.0, abs=expected * 0.02)


def calibrated(arch: str, x: torch.Tensor) -> nn.Module:
    """A ResNet in eval mode whose BN running stats are those of `x`: activations stay O(1)."""
    torch.manual_seed(0)
    model = randomize_bn(ResNet(arch, width=0.125, zero_init_residual=False))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
    return model.eval()


# float32 through a ResNet-50 differs from float64 by 1.5e-5 to 3e-5 of the output's largest value on
# this project's machines, by which kernels the CPU's instruction set selects (measured with every
# ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA level), and by just over 5e-5 on another CI CPU. A wrong
# layout or a lost stride is off by O(1), so 2e-4 still catches it with four orders to spare; the two
# float32 layouts are each held to float64 rather than to each other, which doubles the spread.
FLOAT32_DEEP_RTOL = 2e-4


def assert_close_to_float64(out: torch.Tensor, ref64: torch.Tensor) -> None:
    err = (out.double() - ref64).abs().max() / ref64.abs().max()
    assert err <= FLOAT32_DEEP_RTOL, f"float32 off float64 by {err:.2e} of the largest output"


@pytest.mark.parametrize("arch", ARCHS)
def test_channels_last_equals_contiguous(arch):
    x = torch.randn(4, 3, 32, 32)
    model = calibrated(arch, x)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert cl_model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref64 = copy.deepcopy(model).double()(x.double())
        out = cl_model(x.contiguous(memory_format=torch.channels_last))
        assert_close_to_float64(model(x), ref64)
    assert_close_to_float64(out, ref64)


def test_channels_last_training_mode_close_to_float64():
    """In training mode torch's CPU channels_last BN computes batch variances less accurately than
    the contiguous kernel (its error grows with the mean, about 4e-6 relative at mean 5), and
    ResNet-50's 53 BNs add that up to ~3e-5 relative: so both layouts are held to float64 here."""
    x = torch.randn(4, 3, 32, 32)
    model = calibrated("resnet50", x).train()
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(x.double())
        for layout in (torch.contiguous_format, torch.channels_last):
            out = copy.deepcopy(model).to(memory_format=layout)(x.contiguous(memory_format=layout))
            assert_close_to_float64(out, ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_autocast_bf16_close_to_fp32(arch):
    """bf16 keeps 8 mantissa bits: the representation agrees with fp32 to within 3% (relative L2)."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, width=0.125, channels_last=True)
    model = build_model(cfg)
    randomize_bn(model).eval()
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        h_ref, z_ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h, z = model(x)
    assert h.dtype == torch.bfloat16 and z.dtype == torch.bfloat16
    for low, ref in ((h, h_ref), (z, z_ref)):
        assert torch.isfinite(low).all()
        rel = (low.float() - ref).norm() / ref.norm()
        assert rel < 0.03, f"relative error {rel:.4f}"


@pytest.mark.parametrize("arch, stage, index, projection", [
    ("resnet18", 0, 1, False),
    ("resnet18", 1, 0, True),   # stride 2
    ("resnet50", 0, 0, True),   # stride 1, channels x4
    ("resnet50", 0, 1, False),
    ("resnet50", 2, 0, True),   # stride 2
])
def test_zero_init_block_is_relu_of_shortcut(arch, stage, index, projection):
    torch.manual_seed(0)
    model = ResNet(arch, width=0.125)
    block = model.stages[stage][index]
    assert isinstance(block.shortcut, nn.Sequential) == projection
    assert isinstance(block, Bottleneck if arch == "resnet50" else BasicBlock)
    assert all(torch.count_nonzero(m.last_bn.weight) == 0 for m in model.modules() if hasattr(m, "last_bn"))
    x = torch.randn(4, block.residual[0].in_channels, 8, 8)
    with torch.no_grad():  # training mode: BN uses batch statistics
        assert torch.equal(block(x), torch.relu(block.shortcut(x)))


def test_zero_init_residual_can_be_disabled():
    model = ResNet("resnet18", width=0.125, zero_init_residual=False)
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert all(torch.equal(b.last_bn.weight, torch.ones_like(b.last_bn.weight)) for b in blocks)


def test_projector_out_bn_normalises_z_as_lightlys_simclr_head():
    from lightly.models.modules import SimCLRProjectionHead   # the peers extra: the independent reference

    ours = Projector(64, 32, 16, layers=2, batch_norm=True, out_bn=True)
    theirs = SimCLRProjectionHead(64, 32, 16)
    described = [(type(m).__name__, getattr(m, "bias", None) is not None) for m in ours]
    assert described == [(type(m).__name__, getattr(m, "bias", None) is not None) for m in theirs.layers]
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values())))
    x = torch.randn(8, 64)
    torch.testing.assert_close(ours(x), theirs(x))   # training mode: both normalise z by its batch


def test_per_view_bn_normalises_each_view_with_its_own_statistics():
    cfg = ModelConfig(width=0.125, projector_hidden=32, projector_out=16, channels_last=False)
    model = build_model(cfg, per_view_bn=True)
    reference = copy.deepcopy(model)
    x = torch.randn(12, 3, 32, 32)
    h, z = model(list(x.chunk(2)))
    views = [reference.encoder(v) for v in x.chunk(2)]   # one network call per view, as lightly's loop makes
    torch.testing.assert_close(h, torch.cat(views))
    torch.testing.assert_close(z, torch.cat([reference.projector(v) for v in views]))
    torch.testing.assert_close(model.encoder.stem[1].running_mean, reference.encoder.stem[1].running_mean)
    joint = copy.deepcopy(reference)
    joint.per_view_bn = False
    torch.testing.assert_close(joint(list(x.chunk(2)))[1], reference(x)[1])   # one forward of equal-sized views
    assert not torch.allclose(joint(list(x.chunk(2)))[1], z, atol=1e-3)   # which mixes the views' statistics
    model.eval()
    with torch.no_grad():   # eval: running statistics, the views' blocks change nothing
        torch.testing.assert_close(model(list(x.chunk(2)))[0], model.encoder(x))
    assert build_model(ModelConfig(width=0.125)).per_view_bn is False


def test_views_of_several_sizes_take_one_forward_per_size_in_view_order():
    """Multi-crop: two 32 px global views, three 16 px local views, then a 32 px view again (its own run)."""
    cfg = ModelConfig(width=0.125, projector_hidden=32, projector_out=16)
    model = build_model(cfg)
    reference = copy.deepcopy(model)
    views = [torch.randn(4, 3, s, s) for s in (32, 32, 16, 16, 16, 32)]
    h, z = model(views)
    runs = [torch.cat(views[:2]), torch.cat(views[2:5]), views[5]]
    expected = [reference(run) for run in runs]
    torch.testing.assert_close(h, torch.cat([e[0] for e in expected]))
    torch.testing.assert_close(z, torch.cat([e[1] for e in expected]))
    assert [len(g) for g in model.forward_groups(views)] == [2, 3, 1]
    model.per_view_bn = True
    assert [len(g) for g in model.forward_groups(views)] == [1] * 6


def test_zero_init_residual_follows_the_config():
    for flag, gamma in ((True, 0.0), (False, 1.0)):
        model = build_model(ModelConfig(width=0.125, zero_init_residual=flag))
        gammas = [m.last_bn.weight for m in model.encoder.modules() if isinstance(m, BasicBlock)]
        assert all(torch.equal(g, torch.full_like(g, gamma)) for g in gammas)


@pytest.mark.parametrize("layers, bn, expected", [
    (1, True, [("Linear", 512, 64, True)]),
    (2, True, [("Linear", 512, 256, False), ("BatchNorm1d",), ("ReLU",), ("Linear", 256, 64, True)]),
    (3, False, [("Linear", 512, 256, True), ("ReLU",), ("Linear", 256, 256, True), ("ReLU",),
                ("Linear", 256, 64, True)]),
])
def test_projector_layers(layers, bn, expected):
    proj = Projector(512, 256, 64, layers=layers, batch_norm=bn)
    described = []
    for m in proj:
        if isinstance(m, nn.Linear):
            described.append(("Linear", m.in_features, m.out_features, m.bias is not None))
        else:
            described.append((type(m).__name__,))
    assert described == expected
    assert proj(torch.randn(5, 512)).shape == (5, 64)


def test_build_model_wires_encoder_and_projector():
    cfg = ModelConfig(arch="resnet18", width=0.25, projector_hidden=32, projector_out=16, projector_layers=2)
    model = build_model(cfg)
    assert isinstance(model, SSLNet) and model.encoder.feature_dim == 128
    assert model.projector[0].in_features == 128
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.ndim == 4)
    x = torch.randn(3, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.no_grad():
        h, z = model(x)
        assert torch.equal(h, model.encoder(x))
        assert torch.equal(z, model.projector(h))
    assert h.shape == (3, 128) and z.shape == (3, 16)


def test_build_model_without_channels_last_keeps_contiguous():
    model = build_model(ModelConfig(channels_last=False))
    conv = model.encoder.stem[0].weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)


def test_build_projector_reads_config():
    proj = build_projector(ModelConfig(projector_hidden=48, projector_out=24, projector_layers=3,
                                       projector_bn=False), in_dim=10)
    linears = [m for m in proj if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 48), (48, 48), (48, 24)]


def test_invalid_arch_names_key_and_choices():
    """A config that skipped validation (built in code) still gets the families' forms, not a KeyError."""
    with pytest.raises(ValueError, match=r"model.arch='resnet9': no backbone family builds it \(forms: .*resnet18, "
                                         r"resnet34, resnet50 \(fastssl's.*timm/<name>.*torchvision/<name>"):
        build_model(ModelConfig(arch="resnet9"))
