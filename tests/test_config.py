"""Config validation: one case per rule, each asserting the message names key, value and rule."""
import pytest

from fastssl.cli import main
from fastssl import methods
from fastssl.config import Config, ConfigError, dump_yaml, load_config, validate

CASES = [
    # (overrides, world size, expected message)
    (["method.contrastive.temperature=0"], 1, "method.contrastive.temperature=0.0: must be a finite number in [0.0001, 10000.0]"),
    (["method.contrastive.temperature=-0.5"], 1, "method.contrastive.temperature=-0.5: must be a finite number in [0.0001, 10000.0]"),
    (["method.contrastive.temperature=.nan"], 1, "method.contrastive.temperature=nan: must be a finite number in [0.0001, 10000.0]"),
    (["method.name=protonet", "method.protonet.temperature=0"], 1,
     "method.protonet.temperature=0.0: must be a finite number in [0.0001, 10000.0]"),
    (["method.contrastive.temperature=warm"], 1, "method.contrastive.temperature='warm': must be a number"),
    (["method.contrastive.temprature=0.5"], 1, "unknown key 'method.contrastive.temprature' (known in "
     "method.contrastive: temperature)"),
    (["method.svm.c=0.5", "method.svm.iterations=3"], 1, "unknown key 'method.svm.iterations' (known in method.svm: "
     "temperature, c, iters, tasks)"),
    (["method.simclr2.temperature=0.5"], 1, "unknown key 'method.simclr2' (known in method: name, loss_impl, loss_dtype, "
     "and a section per registered method: barlow_twins, byol, contrastive, dino, moco"),
    (["method.contrastive=0.5"], 1, "method.contrastive=0.5: must be a mapping of the method's settings"),
    (["method.name=svm", "method.svm.c=0"], 1, "method.svm.c=0.0: must be a finite number in [1e-06, 1000000.0]"),
    (["method.name=svm", "method.svm.iters=0"], 1, "method.svm.iters=0: must be >= 1"),
    (["method.name=svm", "method.svm.tasks=3"], 1, "method.svm.tasks=3: must divide loader.batch_size (128)"),
    (["method.name=byol", "method.byol.momentum=1.5"], 1, "method.byol.momentum=1.5: must be in [0, 1]"),
    # Flat keys of configs written before the sections: each names where it went.
    (["method.head=svm"], 1, "method.head: moved to method.name; this config was written for an older fastssl"),
    (["method.temperature=0.5"], 1, "method.temperature: moved to method.<name>.temperature"),
    (["method.n_supp=2"], 1, "method.n_supp: moved to task.n_supp"),
    (["method.task_rotation_p=0.5"], 1, "method.task_rotation_p: moved to task.rotation_p"),
    (["method.query_mix=cutmix"], 1, "method.query_mix: moved to task.query_mix"),
    (["method.svm_c=0.5"], 1, "method.svm_c: moved to method.svm.c; this config was written for an older fastssl"),
    (["method.ridge_lambda=2"], 1, "method.ridge_lambda: moved to method.r2d2.ridge_lambda"),
    (["method.byol_momentum=0.99"], 1, "method.byol_momentum: moved to method.byol.momentum"),
    (["method.loss_impl=fast"], 1, "method.loss_impl='fast': must be one of auto, triton, reference"),
    (["method.loss_dtype=fp16"], 1, "method.loss_dtype='fp16': must be one of auto, fp32, bf16"),
    (["method.name=protonet", "task.n_supp=2"], 1,
     "loader.views=2: must equal task.n_supp + task.n_query = 2 + 1 (every view of an image is a support or a query view)"),
    (["task.n_supp=0", "loader.views=3"], 1, "task.n_supp=0: must be >= 1"),
    (["task.n_query=0"], 1, "task.n_query=0: must be >= 1"),
    (["loader.views=4"], 1, "loader.views=4: must equal task.n_supp + task.n_query = 1 + 1"),
    (["task.rotation_weight=-1"], 1, "task.rotation_weight=-1.0: must be a finite number >= 0"),
    (["task.rotation_weight=0.5"], 1, "task.rotation_weight=0.5: rotation prediction predicts the task "
     "rotations: needs task.rotation_p > 0"),
    (["task.query_mix=mixin"], 1, "task.query_mix='mixin': must be one of none, mixup, cutmix"),
    (["task.query_mix_p=1.5"], 1, "task.query_mix_p=1.5: must be a probability in [0, 1]"),
    (["task.query_mix_alpha=0"], 1, "task.query_mix_alpha=0.0: must be a finite number > 0"),
    (["method.name=svm", "method.svm.tasks=4", "task.query_mix=mixup", "loader.batch_size=48"], 3,
     "method.svm.tasks=4: with query mixing under 3 processes, the tasks and the world size must divide one another"),
    (["method.name=r2d2", "method.r2d2.ridge_lambda=0"], 1, "method.r2d2.ridge_lambda=0.0: must be a finite number in [1e-06, 1000000.0]"),
    (["method.name=r2d2", "method.r2d2.ridge_lambda=.inf"], 1, "method.r2d2.ridge_lambda=inf: must be a finite number in [1e-06, 1000000.0]"),
    (["optim.lr=0"], 1, "optim.lr=0.0: must be a finite number in (0, 1e+06]"),
    (["optim.lr=-1e-3"], 1, "optim.lr=-0.001: must be a finite number in (0, 1e+06]"),
    (["loader.batch_size=1"], 1, "loader.batch_size=1: must be >= 2"),
    (["loader.batch_size=250"], 4, "loader.batch_size=250: must be divisible by the world size (4)"),
    (["loader.views=1", "task.n_query=0"], 1, "loader.views=1: must be >= 2 (a positive pair needs two views)"),
    (["loader.backend=dali2"], 1, "loader.backend='dali2': must be one of tensor, torchvision, ffcv, dali"),
    (["loader.views=8", "task.n_query=7", "augment.crops=[{views: 2, size: 16}, {views: 6, size: 16}]"], 1,
     "augment.crops[0].size=16: must equal data.image_size (32): the first group holds the global views"),
    (["loader.views=8", "task.n_query=7", "augment.crops=[{views: 2, size: 32}, {views: 5, size: 16}]"], 1,
     "augment.crops=[2, 5]: views per group must sum to loader.views = 8"),
    (["loader.views=8", "task.n_query=7", "augment.crops=[{views: 2, size: 32}, {views: 6, size: 48}]"], 1,
     "augment.crops[1].size=48: must be <= the previous group's size (32)"),
    (["loader.views=8", "task.n_query=7", "augment.crops=[{views: 2, size: 32, scale: [0.5, 0.1]}, {views: 6, size: 16}]"],
     1, "augment.crops[0].scale=[0.5, 0.1]: must be [low, high] with 0 < low <= high <= 1"),
    (["loader.views=8", "task.n_query=7", "augment.crops=[{views: 2, size: 32}, {views: 6, size: 8}]",
      "augment.blur_sigma_max=10"], 1, "augment.blur_sigma_max=10.0: must be <= the smallest crop size (8 px"),
    (["loader.views=8", "task.n_query=7", "augment.crops=[{views: 2, size: 32}, {views: 6, size: 16}]",
      "task.query_mix=cutmix"], 1, "task.query_mix='cutmix': cutmix pastes one box into every query view"),
    (["augment.crops=[{views: 2, sz: 32}]"], 1, "unknown key 'augment.crops[0].sz' (known in augment.crops[0]: views, size, scale)"),
    (["model.arch=resnet19"], 1, "model.arch='resnet19': must be one of resnet18, resnet34, resnet50"),
    (["method.name=simclr2"], 1, "method.name='simclr2': must be one of barlow_twins, byol, contrastive, dino, moco, mocov3, protonet, r2d2, simsiam, svm, swav, vicreg"),
    (["data.dataset=imagefolder"], 1, "data.path=None: is required for data.dataset=imagefolder"),
    (["data.dataset=imagefolder", "data.path=/no/such/dir"], 1,
     "data.path='/no/such/dir': must be an existing directory"),
    (["data.dataset=cifar10", "data.path=/no/such/dir"], 1,
     "data.path='/no/such/dir': must be an existing directory (or set data.download=true)"),
    (["data.dataset=fashion_mnist", "data.path=/no/such/dir"], 1,
     "data.path='/no/such/dir': must be an existing directory"),
    (["train.precision=fp8"], 1, "train.precision='fp8': must be one of auto, fp32, bf16, fp16"),
    (["model.width=0.0625"], 1, "model.width=0.0625: must be >= 0.125"),
    (["augment.flip_p=1.5"], 1, "augment.flip_p=1.5: must be a probability in [0, 1]"),
    (["augment.blur_p=[1.0, 1.5]"], 1, "augment.blur_p[1]=1.5: must be a probability in [0, 1]"),
    (["augment.solarize_p=[]"], 1, "augment.solarize_p=[]: must hold at least one value"),
    (["augment.solarize_p=[0.1, x]"], 1, "augment.solarize_p[1]='x': must be a number"),
    (["augment.blur_sigma_min=3"], 1, "augment.blur_sigma_min=(3.0, 2.0): must satisfy 0 < blur_sigma_min <= blur_sigma_max"),
    (["augment.blur_kernel_frac=0"], 1, "augment.blur_kernel_frac=0.0: must be in (0, 1]"),
    (["augment.solarize_threshold=1.5"], 1, "augment.solarize_threshold=1.5: must be in [0, 1]"),
    (["loader.dtype=float64"], 1, "loader.dtype='float64': must be one of auto, float32, bfloat16, float16"),
    (["loader.dtype=bfloat16", "train.precision=fp32"], 1,
     "loader.dtype='bfloat16': half-precision views need train.precision=bf16 (or auto), not fp32"),
    (["model.archh=resnet18"], 1, "unknown key 'model.archh'"),
    (["optim.lr=fast"], 1, "optim.lr='fast': must be a number"),
    (["loader.batch_size=12.5"], 1, "loader.batch_size=12.5: must be an integer"),
    (["model.cifar_stem=yes please"], 1, "model.cifar_stem='yes please': must be true or false"),
    (["optim"], 1, "--set 'optim': must look like key.sub=value"),
]


@pytest.mark.parametrize("overrides,world,message", CASES, ids=[c[2][:40] for c in CASES])
def test_each_rule_fails_with_its_message(overrides, world, message, monkeypatch):
    """The config's own rules, then the method's (fastssl.methods.check, as the trainer runs them)."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    with pytest.raises(ConfigError) as info:
        methods.check(load_config(None, overrides), world)
    assert message in str(info.value)


def test_valid_overrides_take_effect_and_defaults_validate():
    cfg = load_config(None, ["optim.lr=0.5", "loader.views=3", "task.n_query=2", "model.cifar_stem=false",
                             "data.path=/tmp"])
    assert (cfg.optim.lr, cfg.loader.views, cfg.model.cifar_stem, cfg.data.path) == (0.5, 3, False, "/tmp")
    validate(Config(), world=1)


def test_yaml_file_round_trips_and_unknown_yaml_key_fails(tmp_path):
    cfg = load_config(None, ["optim.lr=0.25", "method.contrastive.temperature=0.3", "method.svm.c=0.5"])
    methods.check(cfg)                      # typed sections dump and read back alike
    path = tmp_path / "run.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(path)
    methods.check(again)
    assert again == cfg and again.method.sections["svm"].c == 0.5
    path.write_text("model:\n  depth: 18\n")
    with pytest.raises(ConfigError, match="unknown key 'model.depth'"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_quickstart_yaml_equals_the_builtin_defaults():
    """`fastssl train` with no config and `-c configs/quickstart.yaml` must be the same run."""
    from pathlib import Path

    quickstart, defaults = load_config(Path(__file__).parents[1] / "configs" / "quickstart.yaml"), Config()
    methods.check(quickstart), methods.check(defaults)      # the selected method's section, typed
    assert quickstart == defaults


def test_cli_reports_config_errors_before_any_work(capsys):
    assert main(["train", "--set", "method.contrastive.temperature=0"]) == 2
    err = capsys.readouterr().err
    assert "fastssl train: error: method.contrastive.temperature=0.0: must be a finite number in [0.0001, 10000.0]" in err


def test_config_imports_neither_torch_nor_the_kernels():
    """A config error must come in a second, not after torch's import; importing the kernels would also fix
    TRITON_INTERPRET before the CLI sets it. Of the loaders only their torch-free settings are read."""
    import subprocess
    import sys

    code = ("import sys, fastssl.config; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'triton', 'numpy') or m.startswith(('fastssl.kernels', 'fastssl.loaders'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["fastssl.loaders", "fastssl.loaders.rules", "fastssl.loaders.settings"])


def test_loss_impl_choices_are_the_kernel_dispatch_choices():
    from fastssl.config import LOSS_IMPLS
    from fastssl.kernels.runtime import IMPLS

    assert LOSS_IMPLS == IMPLS


def test_per_view_lists_take_a_scalar_or_a_list_and_pick_by_view_modulo_length():
    cfg = load_config(None, ["augment.blur_p=0.5", "augment.solarize_p=[0.0, 0.2]"])
    assert cfg.augment.blur_p == [0.5] and cfg.augment.solarize_p == [0.0, 0.2]
    assert [cfg.augment.for_view("solarize_p", v) for v in range(4)] == [0.0, 0.2, 0.0, 0.2]
    assert cfg.augment.for_view("blur_p", 3) == 0.5


def test_recipe_fragments_layer_on_a_run_config_in_order(tmp_path):
    """-c RUN.yaml -c configs/augment/byol.yaml: the recipe's augment keys win, the rest stays the run's."""
    from pathlib import Path

    configs = Path(__file__).parents[1] / "configs"
    cfg = load_config([configs / "cifar10_jpeg.yaml", configs / "augment" / "byol.yaml"], ["data.path=/tmp"])
    assert cfg.model.width == 1.0 and cfg.loader.batch_size == 512            # from the run config
    a = cfg.augment
    assert (a.blur_p, a.solarize_p, a.saturation, a.crop_scale_min) == ([1.0, 0.1], [0.0, 0.2], 0.2, 0.08)
    simclr = load_config([configs / "augment" / "simclr_imagenet.yaml"])
    assert (simclr.augment.blur_p, simclr.augment.brightness, simclr.augment.hue) == ([0.5], 0.8, 0.2)
    cifar = load_config([configs / "augment" / "simclr_cifar.yaml"])
    assert (cifar.augment.crop_scale_min, cifar.augment.blur_p, cifar.augment.brightness) == (0.2, [0.0], 0.4)


def test_cli_layers_repeated_configs(tmp_path, capsys):
    run = tmp_path / "a.yaml"
    run.write_text("method:\n  contrastive:\n    temperature: 0.3\n")
    recipe = tmp_path / "b.yaml"
    recipe.write_text("method:\n  contrastive:\n    temperature: -1\n")
    assert main(["train", "-c", str(run), "-c", str(recipe)]) == 2
    assert "method.contrastive.temperature=-1.0: must be a finite number in [0.0001, 10000.0]" in capsys.readouterr().err


def test_simclr_is_the_contrastive_method_under_its_papers_name():
    """method.name=simclr (and a method.simclr section) read as the contrastive method, so the saved config
    and the checkpoint name one method whichever name the user wrote."""
    cfg = load_config(None, ["method.name=simclr", "method.simclr.temperature=0.5"])
    methods.check(cfg)
    assert cfg.method.name == "contrastive" and cfg.method.contrastive.temperature == 0.5
    assert "simclr" not in cfg.method.sections
