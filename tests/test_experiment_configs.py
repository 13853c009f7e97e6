"""The README's experiment commands: each one's configs load and validate, and the values that map the
original code's flags are the documented ones (so README, configs and fastssl bench heads agree)."""
import re
import shlex
from pathlib import Path

import pytest

from fastssl import methods
from fastssl.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def readme_train_commands() -> list[list[str]]:
    section = ROOT.joinpath("README.md").read_text().split("## Experiments", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("fastssl train")]


def load_command(argv: list[str], data_dir: Path):
    files = [argv[i + 1] for i, a in enumerate(argv) if a == "-c"]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    sets = [f"data.path={data_dir}" if s.startswith("data.path=") else s for s in sets]
    cfg = load_config([ROOT / f for f in files], sets)
    methods.check(cfg)
    return cfg


COMMANDS = readme_train_commands()


def test_readme_lists_every_experiment():
    heads = [next(a for a in c if a.startswith("configs/heads/")) for c in COMMANDS if "configs/omniglot_fewshot.yaml" not in c]
    assert len(COMMANDS) == 13
    assert sorted(set(heads)) == [f"configs/heads/{h}.yaml" for h in ("byol", "contrastive", "protonet", "r2d2", "svm")]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a for a in c if a.endswith(".yaml")) for c in COMMANDS])
def test_command_config_validates(argv, tmp_path):
    cfg = load_command(argv, tmp_path)
    assert cfg.loader.views == cfg.task.n_supp + cfg.task.n_query


def _find(*files: str):
    return next(c for c in COMMANDS if all(f in c for f in files) and
                (("configs/tricks/task_aug.yaml" in c) == ("configs/tricks/task_aug.yaml" in files)) and
                (("configs/tasks/2shot.yaml" in c) == ("configs/tasks/2shot.yaml" in files)))


def test_flag_mapping_values(tmp_path):
    imagenet = load_command(_find("configs/imagenet_resnet50.yaml", "configs/heads/contrastive.yaml"), tmp_path)
    assert imagenet.method.contrastive.temperature == pytest.approx(1 / 10.0)          # their --temperature 10. multiplies
    assert (imagenet.model.arch, imagenet.loader.batch_size, imagenet.train.epochs) == ("resnet50", 256, 100)
    assert imagenet.optim.lr == pytest.approx(0.3 * 256 / 256) and imagenet.augment.blur_p == [0.5]
    r2d2 = load_command(_find("configs/imagenet_resnet50.yaml", "configs/heads/r2d2.yaml"), tmp_path)
    assert r2d2.method.r2d2.ridge_lambda == pytest.approx(50 * 0.1) and r2d2.method.r2d2.temperature == 1.0
    shots = load_command(_find("configs/cifar10_jpeg.yaml", "configs/heads/protonet.yaml", "configs/tasks/2shot.yaml"),
                         tmp_path)
    assert (shots.loader.views, shots.task.n_supp, shots.task.n_query, shots.method.name) == (3, 2, 1, "protonet")
    tricks = load_command(_find("configs/heads/byol.yaml", "configs/tricks/task_aug.yaml"), tmp_path)
    t = tricks.task
    assert (tricks.method.name, t.rotation_p, t.rotation_weight, t.query_mix) == ("byol", 0.5, 0.5, "cutmix")
    assert tricks.augment.solarize_p == [0.0, 0.2]   # BYOL's recipe layered
    fewshot = load_command(_find("configs/omniglot_fewshot.yaml"), tmp_path)
    assert (fewshot.data.dataset, fewshot.data.image_size, fewshot.knn.every_epochs) == ("omniglot", 28, 0)


# Published recipes (configs/recipes/<method>_<dataset>.yaml): each a fragment on its dataset's run config.
RECIPES = sorted(ROOT.joinpath("configs", "recipes").glob("*.yaml"))
RECIPE_BASES = {"cifar10": "configs/cifar10_jpeg.yaml", "imagenet": "configs/imagenet_resnet50.yaml"}
RECIPE_METHODS = ("dino", "swav", "barlow_twins", "vicreg", "mocov3")
# The accuracy each header quotes, as read in its source (solo-learn's README table; the official READMEs).
PUBLISHED = {"dino_cifar10": "89.52%", "swav_cifar10": "89.17%", "barlow_twins_cifar10": "92.10%",
             "vicreg_cifar10": "92.07%", "mocov3_cifar10": "93.10%", "dino_imagenet": "75.3%",
             "dino_imagenet_vits16": "76.0%", "swav_imagenet": "75.3%", "barlow_twins_imagenet": "73.5%",
             "vicreg_imagenet": "73.2%", "mocov3_imagenet": "74.6%"}


def recipe_parts(path: Path) -> tuple[str, str]:
    """configs/recipes/<method>_<dataset>[_variant].yaml -> (method, dataset)."""
    match = re.fullmatch(rf"({'|'.join(RECIPE_METHODS)})_({'|'.join(RECIPE_BASES)})(_\w+)?", path.stem)
    assert match, f"{path.name}: must be named <method>_<dataset>[_variant].yaml"
    return match.group(1), match.group(2)


def header(path: Path) -> str:
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[:next(i for i, l in enumerate(lines) if not l.startswith("#"))])


def test_recipes_cover_every_method_on_both_datasets():
    names = {p.stem for p in RECIPES}
    assert {f"{m}_{d}" for m in RECIPE_METHODS for d in RECIPE_BASES} <= names
    assert names == set(PUBLISHED)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_loads_on_its_base_config(recipe, tmp_path):
    method, dataset = recipe_parts(recipe)
    cfg = load_config([ROOT / RECIPE_BASES[dataset], recipe], [f"data.path={tmp_path}"])
    methods.check(cfg)
    assert cfg.method.name == method
    assert cfg.optim.lr is not None and cfg.optim.weight_decay is not None and cfg.train.precision == "fp16"
    crops = cfg.augment.crops
    if method in ("dino", "swav") and dataset == "imagenet":
        assert crops is not None, "DINO's and SwAV's ImageNet recipes are multi-crop"
    if crops is not None:
        assert len(crops) == 2 and sum(g.views for g in crops) == cfg.loader.views
        assert crops[0].views == 2 and crops[0].size == cfg.data.image_size > crops[1].size
        assert cfg.task.n_supp + cfg.task.n_query == cfg.loader.views


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipe_header_names_its_source_and_accuracy(recipe):
    text = header(recipe)
    source = re.search(r"^# Source: (\S+/\S+), (\S+)", text, re.M)
    assert source, f"{recipe.name}: the header must say '# Source: owner/repository, path'"
    assert re.search(r"^# Published: .*?\d+\.\d+%", text, re.M), f"{recipe.name}: no '# Published: NN.N%' line"
    assert PUBLISHED[recipe.stem] in text
    assert re.search(r"linear|Acc@1", text) and "# Not reproduced" in text
    assert re.search(r"^# Learning rate: .*", text, re.M) and "optim.lr" in text   # the lr conversion is stated


def test_recipe_learning_rates_follow_their_sources(tmp_path):
    """optim.lr is absolute in fastssl: each recipe's rate is its source's rule at the recipe's batch."""
    expected = {"dino_cifar10": 0.3 * 256 / 256, "swav_cifar10": 0.6 * 256 / 256, "mocov3_cifar10": 0.3,
                "barlow_twins_cifar10": 0.3, "vicreg_cifar10": 0.3, "dino_imagenet": 0.03 * 512 / 256,
                "dino_imagenet_vits16": 0.0005 * 1024 / 256, "swav_imagenet": 4.8,
                "barlow_twins_imagenet": 0.2 * 2048 / 256, "vicreg_imagenet": 0.2 * 2048 / 256,
                "mocov3_imagenet": 0.3 * 4096 / 256}
    for recipe in RECIPES:
        cfg = load_config([ROOT / RECIPE_BASES[recipe_parts(recipe)[1]], recipe], [f"data.path={tmp_path}"])
        assert cfg.optim.lr == pytest.approx(expected[recipe.stem]), recipe.name


def test_readme_lists_the_recipes():
    readme = ROOT.joinpath("README.md").read_text()
    for recipe in RECIPES:
        assert f"recipes/{recipe.name}" in readme, recipe.name
