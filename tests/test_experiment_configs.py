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
