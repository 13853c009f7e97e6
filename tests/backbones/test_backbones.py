"""The backbone families' rules, checked against the libraries themselves: feature widths, stems, the
ViT's attention and patch size, the optimizer recipe per kind, model.init, and the one-line errors."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from fastssl.checkpoint import CheckpointError
from fastssl.config import ConfigError, load_config
from fastssl.models import build_model
from fastssl.optim import build_optimizer
from fastssl.optim.lars import LARS

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

VIT = ["model.arch=timm/vit_tiny_patch16_224", "model.kwargs={img_size: 32, patch_size: 4, depth: 2}"]


def _model(sets, image_size=32, **kw):
    return build_model(load_config(None, sets).model, image_size=image_size, **kw)


@pytest.mark.parametrize("arch, width", [("torchvision/resnet50", 2048), ("torchvision/mobilenet_v3_small", 1024),
                                         ("timm/resnet10t", 512)])
def test_feature_width_is_the_librarys_own(arch, width):
    assert _model([f"model.arch={arch}"], image_size=64).encoder.feature_dim == width


def test_timm_vit_width_and_library_features_are_timms():
    model = _model(VIT)
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=4, depth=2)
    assert model.encoder.feature_dim == reference.num_features == 192
    reference.load_state_dict(model.encoder.state_dict())   # strict: timm's own names
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.eval()(images), reference.eval()(images))


def test_timm_vit_attention_runs_on_scaled_dot_product_attention(monkeypatch):
    model = _model(VIT).eval()
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(calls) == 2   # one per block (depth 2)


def test_torchvision_resnet_cifar_stem_is_a_3x3_stride_1_conv_without_pool():
    small, large = _model(["model.arch=torchvision/resnet18"], 32), _model(["model.arch=torchvision/resnet18"], 224)
    assert (small.encoder.conv1.kernel_size, small.encoder.conv1.stride) == ((3, 3), (1, 1))
    assert isinstance(small.encoder.maxpool, nn.Identity)
    assert (large.encoder.conv1.kernel_size, large.encoder.conv1.stride) == ((7, 7), (2, 2))   # null: off at 224
    assert isinstance(large.encoder.maxpool, nn.MaxPool2d) and isinstance(large.encoder.fc, nn.Identity)
    # zero_init_residual reaches torchvision's constructor
    assert all(float(b.bn2.weight.abs().sum()) == 0 for b in small.encoder.layer1)


@pytest.mark.parametrize("sets, rule", [
    ([*VIT, "model.cifar_stem=true"], "model.cifar_stem=true: timm/vit_tiny_patch16_224 is a timm model"),
    (["model.arch=torchvision/vit_b_16", "model.cifar_stem=true"], "torchvision's vit_b_16 is not a ResNet"),
    (["model.arch=timm/vit_tiny_patch16_224", "model.kwargs={img_size: 32, patch_size: 5}"], "data.image_size=32"),
    (["model.arch=timm/vit_tiny_patch16_224"], "was built for 224x224 images in 16x16 patches"),
    (["model.arch=torchvision/no_such_net"], "torchvision has no classification model 'no_such_net'"),
    (["model.arch=timm/no_such_net"], "timm has no model 'no_such_net'"),
    (["model.arch=torchvision/resnet18", "model.kwargs={depth: 3}"], "torchvision's resnet18 refuses them"),
    (["model.kwargs={depth: 3}"], "fastssl's ResNets take none"),
    (["model.arch=torchvision/squeezenet1_0"], "has no linear classifier to remove"),
])
def test_backbone_rules_are_one_line_config_errors(sets, rule):
    with pytest.raises(ConfigError) as info:
        _model(sets)
    assert rule in str(info.value) and "\n" not in str(info.value)


def test_patch_size_error_comes_before_any_image_is_read():
    """timm would only assert inside the first forward; the check names data.image_size and the fix."""
    with pytest.raises(ConfigError, match=r"set model.kwargs img_size to data.image_size"):
        _model(["model.arch=timm/vit_tiny_patch16_224", "model.kwargs={img_size: 224}"], image_size=32)


def test_missing_timm_is_named_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"needs the timm package: pip install 'fastssl\[timm\]'"):
        _model(VIT)


@pytest.mark.parametrize("arch", ["timm/", "timm/vit tiny", "resnet9", "/resnet18"])
def test_arch_form_is_checked_before_torch(arch):
    with pytest.raises(ConfigError, match=r"model.arch=.*: must be one of resnet18, resnet34, resnet50"):
        load_config(None, [f"model.arch={arch}"])


def test_kwargs_merge_across_overrides_and_refuse_non_mappings():
    cfg = load_config(None, ["model.kwargs={img_size: 32}", "model.kwargs.patch_size=4"])
    assert cfg.model.kwargs == {"img_size": 32, "patch_size": 4}
    with pytest.raises(ConfigError, match=r"model.kwargs=\[1, 2\]: must be a mapping"):
        load_config(None, ["model.kwargs=[1, 2]"])


# -- the optimizer recipe of each kind ---------------------------------------------------------------


def test_vit_gets_adamw_without_decay_on_norms_biases_position_embedding_and_class_token():
    model = _model(VIT)
    optimizer = build_optimizer(load_config(None, VIT).optim, model, batch_size=128)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == pytest.approx(5e-4 * 128 / 256)
    decayed, plain = ({name for name, p in model.named_parameters() if any(p is q for q in g["params"])}
                      for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.05, 0.0]
    # Independent of the code's rule: by name, as the ViT recipes list them
    expected_plain = {n for n, p in model.named_parameters()
                      if p.ndim <= 1 or n.endswith(("pos_embed", "cls_token", "reg_token", "dist_token"))}
    assert plain == expected_plain and decayed == {n for n, _ in model.named_parameters()} - expected_plain
    assert {"encoder.pos_embed", "encoder.cls_token", "encoder.blocks.0.norm1.weight"} <= plain
    assert "encoder.blocks.0.attn.qkv.weight" in decayed


def test_torchvision_vit_excludes_its_class_token_and_position_embedding():
    model = _model(["model.arch=torchvision/vit_b_16", "model.kwargs={image_size: 32}", "model.cifar_stem=false"])
    optimizer = build_optimizer(load_config(None, []).optim, model)
    plain = {n for n, p in model.named_parameters() if any(p is q for q in optimizer.param_groups[1]["params"])}
    assert {"encoder.class_token", "encoder.encoder.pos_embedding"} <= plain
    assert isinstance(optimizer, torch.optim.AdamW)


def test_resnets_keep_lars_and_a_set_optimizer_is_kept():
    resnet = _model(["model.arch=torchvision/resnet18"])
    lars = build_optimizer(load_config(None, []).optim, resnet)
    assert isinstance(lars, LARS) and (lars.defaults["lr"], lars.defaults["weight_decay"]) == (1.0, 1e-6)
    sgd = build_optimizer(load_config(None, [*VIT, "optim.name=sgd", "optim.lr=0.2"]).optim, _model(VIT))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["lr"] == 0.2
    assert [g["weight_decay"] for g in sgd.param_groups] == [5e-4, 0.0]


# -- model.init ----------------------------------------------------------------------------------------


def test_init_loads_a_torchvision_state_dict_and_passes_over_its_classifier(tmp_path):
    torch.manual_seed(3)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pt")   # with fc.*, as torchvision's files hold
    model = _model(["model.arch=torchvision/resnet18", "model.cifar_stem=false", f"model.init={tmp_path / 'r18.pt'}"],
                   image_size=64)
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name


def test_init_loads_a_timm_file_with_its_head(tmp_path):
    torch.manual_seed(4)
    source = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=10)
    torch.save(source.state_dict(), tmp_path / "vit.pt")   # head.weight, head.bias: the classifier timm names
    model = _model([*VIT, f"model.init={tmp_path / 'vit.pt'}"])
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, source.state_dict()[name]), name


def test_init_that_does_not_fit_names_the_keys_and_a_torn_file_names_itself(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ConfigError, match=r"model.init=.*wrong.pt.*its keys do not fit the model \(missing"):
        _model(["model.arch=torchvision/resnet18", f"model.init={tmp_path / 'wrong.pt'}"])
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "torn.pt")
    data = (tmp_path / "torn.pt").read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.init .*torn.pt.*cannot be read as a state dict"):
        _model(["model.arch=torchvision/resnet18", f"model.init={tmp_path / 'torn.pt'}"])
    with pytest.raises(ConfigError, match=r"model.init=.*: must be an existing weights file"):
        load_config(None, [f"model.init={tmp_path / 'absent.pt'}"])


def test_a_users_module_is_the_encoder_and_cifar_stem_is_refused():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = _model(["model.arch=module"], module=net)
    assert model.encoder is net and net.feature_dim == 8
    with pytest.raises(ConfigError, match="model.cifar_stem=true: a user's module keeps its own stem"):
        _model(["model.arch=module", "model.cifar_stem=true"], module=nn.Sequential(nn.Flatten()))
    with pytest.raises(ConfigError, match=r"must map \(B, 3, H, W\) images to \(B, D\) features, gave \(2, 8, 30, 30\)"):
        _model(["model.arch=module"], module=nn.Conv2d(3, 8, 3))
