"""The README's "Use your encoder" recipe, run as written: its four lines load an exported full-width
ResNet-18 into torchvision's own model, which then gives fastssl's features."""
import re
from pathlib import Path

import torch

from fastssl.checkpoint import load_checkpoint
from fastssl.cli import main
from fastssl.config import load_config
from fastssl.engine.trainer import Trainer
from fastssl.models import build_model

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_recipe() -> str:
    section = README.read_text().split("## Use your encoder", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_readme_recipe_loads_the_export_into_torchvision(tmp_path):
    run = tmp_path / "RUN"
    Trainer(load_config(None, ["model.width=1.0", "data.num_train=64", "data.num_test=32", "loader.batch_size=16",
                               "train.max_steps=1", "knn.every_epochs=0", "train.device=cpu",
                               "augment.impl=reference"]), run).fit()
    assert main(["export", str(run)]) == 0
    code = readme_recipe()
    assert len(code.strip().splitlines()) == 4
    scope = {}
    exec(code.replace('"RUN/', f'"{run}/'), scope)
    model = scope["model"].eval()
    assert type(model).__module__ == "torchvision.models.resnet"
    encoder = build_model(load_config(run / "config.yaml").model)
    encoder.load_state_dict(load_checkpoint(run / "last.pt")["model"])
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), encoder.encoder.eval()(x), rtol=1e-4, atol=1e-6)   # layouts differ
