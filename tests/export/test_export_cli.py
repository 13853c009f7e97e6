"""`fastssl export` end to end: tiny trained runs (contrastive, byol), every format through the CLI, each
file read back with its own library and compared with the checkpoint's weights or a network built from it."""
import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import fastssl
from fastssl.checkpoint import load_checkpoint
from fastssl.cli import main
from fastssl.config import load_config
from fastssl.engine.trainer import Trainer
from fastssl.export.networks import Exported
from fastssl.methods import MethodContext, methods
from fastssl.models import SSLNet, build_model, torchvision_resnet

RUN = ["data.num_train=256", "data.num_test=64", "loader.batch_size=32", "train.max_steps=1", "train.precision=fp32",
       "train.device=cpu", "knn.every_epochs=0", "knn.k=10", "model.width=0.125", "model.projector_hidden=32",
       "model.projector_out=16", "augment.impl=reference", "method.loss_impl=reference"]


def _train(tmp_path_factory, *overrides) -> object:
    out = tmp_path_factory.mktemp("export") / "run"
    Trainer(load_config(None, RUN + list(overrides)), out).fit()
    return out


@pytest.fixture(scope="module")
def contrastive_run(tmp_path_factory):
    return _train(tmp_path_factory)


@pytest.fixture(scope="module")
def byol_run(tmp_path_factory):
    return _train(tmp_path_factory, "method.name=byol")


def _export(capsys, run, *flags) -> str:
    assert main(["export", str(run), *flags]) == 0
    return capsys.readouterr().out


def _fails(capsys, run, *flags) -> str:
    assert main(["export", str(run), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fastssl export: error: ")
    return err


def _network(run, part: str = "encoder"):
    """The online network rebuilt from the run's files, not through the export code: the reference."""
    model = build_model(load_config(run / "config.yaml").model)
    model.load_state_dict(load_checkpoint(run / "last.pt")["model"])
    model.eval()
    return model.encoder if part == "encoder" else model


def _images(n: int) -> torch.Tensor:
    """Another batch size than the exporter's trace and check (2 and 3): the batch must not be baked in."""
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _weights(run, entry: str, prefix: str) -> dict:
    """The checkpoint entry's tensors under `prefix`, the prefix removed."""
    state = load_checkpoint(run / "last.pt")[entry]
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _close(got, want) -> None:
    assert got.shape == want.shape
    assert float((torch.as_tensor(got) - want).abs().max()) <= 1e-5 * max(1.0, float(want.abs().max()))


def test_torchvision_encoder_round_trip(contrastive_run, capsys):
    out = _export(capsys, contrastive_run)
    path = contrastive_run / "online_encoder.torchvision.pt"
    saved = torch.load(path, weights_only=True)
    meta = saved["metadata"]
    assert (meta["format"], meta["stem"], meta["cifar_stem"]) == ("torchvision", "cifar", "true")
    assert meta["build"] == "fastssl.models.torchvision_resnet('resnet18', cifar_stem=True, width=0.125)"
    assert "model.conv1 = nn.Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1)" in meta["adapt"]
    assert "model.maxpool = nn.Identity()" in meta["adapt"] and "needs the cifar stem: model.conv1" in out
    assert f"wrote {path}" in out and "check: max abs error 0 " in out   # the README says 0: same ops, same order
    model = torchvision_resnet("resnet18", cifar_stem=True, width=0.125)
    model.load_state_dict(saved["state_dict"], strict=True)
    x = _images(4)
    with torch.no_grad():
        _close(model.eval()(x), _network(contrastive_run)(x))


def test_torchvision_encoder_projector_ends_in_the_projection(contrastive_run, capsys, tmp_path):
    """fc = the projector as a plain nn.Sequential (as the metadata writes it): the model returns z."""
    _export(capsys, contrastive_run, "--part", "encoder+projector", "--out", str(tmp_path / "p.pt"))
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    fc = eval(saved["metadata"]["adapt"].split("model.fc = ")[1], {"nn": torch.nn})
    model = torchvision_resnet("resnet18", cifar_stem=True, width=0.125, fc=fc)
    model.load_state_dict(saved["state_dict"], strict=True)
    x = _images(4)
    with torch.no_grad():
        _close(model.eval()(x), _network(contrastive_run, "encoder+projector")(x)[1])


def test_safetensors_tensors_and_metadata(contrastive_run, capsys, tmp_path):
    path = tmp_path / "enc.safetensors"
    assert "check: max abs error 0 " in _export(capsys, contrastive_run, "--format", "safetensors", "--out", str(path))
    tensors = load_file(path)
    expected = _weights(contrastive_run, "model", "encoder.")
    assert sorted(tensors) == sorted(expected) and all(torch.equal(tensors[k], expected[k]) for k in expected)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    checkpoint = load_checkpoint(contrastive_run / "last.pt")
    assert {k: meta[k] for k in ("format", "arch", "width", "cifar_stem", "part", "network", "method", "step")} == {
        "format": "safetensors", "arch": "resnet18", "width": "0.125", "cifar_stem": "true", "part": "encoder",
        "network": "online", "method": "contrastive", "step": str(checkpoint["run"]["step"])}
    assert meta["step"] == "1"
    assert yaml.safe_load(meta["config"]) == yaml.safe_load((contrastive_run / "config.yaml").read_text())
    assert meta["git_commit"] == json.loads((contrastive_run / "env.json").read_text())["git_commit"]
    assert meta["fastssl_version"] == fastssl.__version__


def test_byol_target_is_the_momentum_network_and_not_the_online_one(byol_run, capsys, tmp_path):
    for network in ("online", "target"):
        _export(capsys, byol_run, "--format", "safetensors", "--part", "encoder+projector", "--network", network,
                "--out", str(tmp_path / f"{network}.safetensors"))
    online, target = (load_file(tmp_path / f"{n}.safetensors") for n in ("online", "target"))
    assert all(torch.equal(online[k], v) for k, v in _weights(byol_run, "model", "").items())
    method = _weights(byol_run, "method", "target.")
    assert sorted(target) == sorted(method) == sorted(online)
    assert all(torch.equal(target[k], method[k]) for k in method)
    # The EMA lags the online weights; BN statistics can agree (at step 1 both saw the same images).
    assert not torch.equal(target["encoder.stem.0.weight"], online["encoder.stem.0.weight"])
    with safe_open(tmp_path / "target.safetensors", "pt") as f:
        assert (f.metadata()["network"], f.metadata()["method"]) == ("target", "byol")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_matches_the_network(contrastive_run, capsys, tmp_path):
    out = _export(capsys, contrastive_run, "--format", "torchscript", "--part", "encoder+projector",
                  "--out", str(tmp_path / "net.pt"))
    assert "(torch.jit.load)" in out and "max abs error" in out
    extra = {"metadata.json": ""}
    loaded = torch.jit.load(tmp_path / "net.pt", _extra_files=extra)
    assert json.loads(extra["metadata.json"])["part"] == "encoder+projector"
    x = _images(4)
    with torch.no_grad():
        (h, z), (want_h, want_z) = loaded(x), _network(contrastive_run, "encoder+projector")(x)
    _close(h, want_h)
    _close(z, want_z)


def test_onnx_matches_the_network(byol_run, capsys, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "target.onnx"
    out = _export(capsys, byol_run, "--format", "onnx", "--network", "target", "--out", str(path))
    assert "(onnxruntime)" in out and "max abs error" in out
    assert {p.key: p.value for p in onnx.load(path).metadata_props}["network"] == "target"
    target = build_model(load_config(byol_run / "config.yaml").model)
    target.load_state_dict(_weights(byol_run, "method", "target."))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _images(5)
    (features,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        _close(torch.from_numpy(features), target.eval().encoder(x))


def test_onnx_without_onnxruntime_is_checked_by_onnx_checker_and_says_so(contrastive_run, capsys, tmp_path,
                                                                         monkeypatch):
    onnx = pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # `import onnxruntime` raises ImportError
    out = _export(capsys, contrastive_run, "--format", "onnx", "--part", "encoder+projector",
                  "--out", str(tmp_path / "net.onnx"))
    assert "check: onnx.checker passed; outputs not compared, onnxruntime is not installed" in out
    graph = onnx.load(tmp_path / "net.onnx").graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["features", "projection"]


def test_onnx_without_the_package_names_the_extra(contrastive_run, capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)   # `import onnx` raises ImportError
    err = _fails(capsys, contrastive_run, "--format", "onnx", "--out", str(tmp_path / "x.onnx"))
    assert "pip install 'fastssl[onnx]'" in err
    assert list(tmp_path.iterdir()) == []


def test_target_of_a_method_without_momentum_network(contrastive_run, capsys, tmp_path):
    err = _fails(capsys, contrastive_run, "--network", "target", "--out", str(tmp_path / "x.pt"))
    assert "method 'contrastive' keeps no momentum network" in err and "Method.momentum_network" in err
    assert "byol, dino, moco, mocov3" in err and list(tmp_path.iterdir()) == []


def test_truncated_checkpoint_is_refused_and_nothing_written(contrastive_run, capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((contrastive_run / "config.yaml").read_text())
    data = (contrastive_run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    err = _fails(capsys, run)
    assert f"checkpoint {str(run / 'last.pt')!r}: cannot be read" in err and "truncated" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pt"]


def test_a_file_that_does_not_reproduce_the_network_is_not_left(contrastive_run, capsys, tmp_path, monkeypatch):
    reference = Exported.reference
    monkeypatch.setattr(Exported, "reference", lambda self: tuple(o + 1 for o in reference(self)))
    err = _fails(capsys, contrastive_run, "--format", "safetensors", "--out", str(tmp_path / "x.safetensors"))
    assert "check: max abs error 1 " in err and "beyond float32 rounding" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--format", "pickle"], "--format 'pickle': must be one of onnx, safetensors, timm, torchscript, torchvision"),
    (["--part", "projector"], "--part 'projector': must be one of encoder, encoder+projector"),
    (["--network", "ema"], "--network 'ema': must be one of online, target"),
])
def test_bad_flags_name_the_flag_and_the_choices_before_torch_loads(tmp_path, flags, message):
    code = ("import sys; from fastssl.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "export", str(tmp_path), *flags], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == f"fastssl export: error: {message}"


def test_every_momentum_network_is_an_sslnet_in_the_methods_state():
    """The hook export relies on: the attribute a method names holds a copy of the online network."""
    cfg = load_config(None, RUN)
    online = build_model(cfg.model)
    having = {name: cls for name, cls in methods().items() if cls.momentum_network}
    assert sorted(having) == ["byol", "dino", "moco", "mocov3"]
    for name, cls in having.items():
        method = cls.build(cls.Settings(), MethodContext(16, 32, online=online))
        copy = getattr(method, cls.momentum_network)
        assert isinstance(copy, SSLNet)
        prefix = cls.momentum_network + "."
        assert sorted(k.removeprefix(prefix) for k in method.state_dict() if k.startswith(prefix)) == \
            sorted(online.state_dict())


@pytest.mark.parametrize("method", ["contrastive", "byol"])
@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize("cifar_stem", [True, False], ids=["cifar-stem", "imagenet-stem"])
def test_every_arch_and_stem_round_trips_for_both_methods(tmp_path_factory, capsys, arch, cifar_stem, method):
    """A trained run of each shape: the torchvision file (both networks of BYOL) and the safetensors file
    reproduce the checkpoint's encoder, and carry its shape in their metadata."""
    run = _train(tmp_path_factory, f"model.arch={arch}", f"model.cifar_stem={str(cifar_stem).lower()}",
                 f"method.name={method}", "data.num_train=64", "data.num_test=32")
    x = _images(3)
    networks = ["online", "target"] if method == "byol" else ["online"]
    for network in networks:
        out = tmp_path_factory.mktemp("out")
        _export(capsys, run, "--network", network, "--out", str(out / "enc.pt"))
        _export(capsys, run, "--network", network, "--format", "safetensors", "--out", str(out / "enc.safetensors"))
        saved = torch.load(out / "enc.pt", weights_only=True)
        assert (saved["metadata"]["arch"], saved["metadata"]["cifar_stem"], saved["metadata"]["method"],
                saved["metadata"]["network"]) == (arch, str(cifar_stem).lower(), method, network)
        model = torchvision_resnet(arch, cifar_stem=cifar_stem, width=0.125)
        model.load_state_dict(saved["state_dict"], strict=True)
        reference = build_model(load_config(run / "config.yaml").model)
        weights = _weights(run, "model", "") if network == "online" else _weights(run, "method", "target.")
        reference.load_state_dict(weights)
        encoder = reference.encoder.eval()
        ours = build_model(load_config(run / "config.yaml").model).encoder
        ours.load_state_dict(load_file(out / "enc.safetensors"), strict=True)
        with torch.no_grad():
            want = encoder(x)
            _close(model.eval()(x), want)
            _close(ours.eval()(x), want)
