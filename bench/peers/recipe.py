"""The one training setting every trainer in `fastssl bench peers` is given, and each run's spec.

A comparison means the same images, network, batch, views, augmentation, optimizer, schedule and
epochs for everyone; this dataclass is that setting, written once and translated by each runner into
its trainer's own terms. What a trainer cannot express, its runner says (`Spec.substitutions`).

The defaults: SimCLR's CIFAR augmentation (crop scale 0.2, colour strength 0.5, grayscale 0.2, no blur
or solarisation at 32 px), SGD with momentum 0.9 at lightly's CIFAR-10 benchmark learning rate
(0.06 x batch / 128) and weight decay 5e-4, linear warm-up over a tenth of the epochs (LightlyTrain
fixes that share) then cosine decay to 0 by step, projector 512 -> 128, BYOL's EMA from 0.99 to 1.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

METHODS = ("simclr", "byol", "moco", "simsiam")


@dataclass
class Recipe:
    method: str = "simclr"
    arch: str = "resnet18"
    width: float = 1.0
    res: int = 32
    batch: int = 256
    views: int = 2
    epochs: int = 1
    seed: int = 0
    workers: int = 2                 # data-loading processes or threads, every trainer alike
    lr_per_128: float = 0.06         # SGD learning rate = lr_per_128 * batch / 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    projector_hidden: int = 512
    projector_out: int = 128
    temperature: float = 0.5         # SimCLR's NT-Xent; MoCo's InfoNCE
    ema_start: float = 0.99          # BYOL and MoCo target networks: cosine from this to 1
    crop_scale_min: float = 0.2
    flip_p: float = 0.5
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)   # brightness, contrast, saturation, hue
    grayscale_p: float = 0.2
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)          # ImageNet's, as every trainer's default
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def lr(self) -> float:
        return self.lr_per_128 * self.batch / 128

    @property
    def cifar_stem(self) -> bool:
        """The 3x3 stride-1 stem without max-pool below 64 px, torchvision's 7x7 stem above."""
        return self.res < 64

    @property
    def warmup_fraction(self) -> float:
        return 0.1

    @property
    def projector_out_bn(self) -> bool:
        """BN on the projection z: lightly's and LightlyTrain's SimCLR heads have it, BYOL's head has not."""
        return self.method == "simclr"


@dataclass
class Spec:
    """One run: which trainer (peer, and backend for fastssl), on what data, with which recipe."""
    peer: str
    recipe: Recipe
    data: str                        # image folder with train/<class>/* (and test/<class>/*)
    out: str                         # the run's own folder: backbone.pt and result.json go here
    backend: str = ""                # fastssl only: tensor, torchvision, ffcv or dali
    beton: str = ""                  # fastssl ffcv only
    launched: float = 0.0            # time.time() when the parent started the process
    profile_after: int = 0           # --profile-steps: torch.profiler from this optimizer step ...
    profile_steps: int = 0           # ... for this many steps (0: not profiled)
    substitutions: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.peer}:{self.backend}" if self.backend else self.peer

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Spec":
        raw = json.loads(Path(path).read_text())
        raw["recipe"] = Recipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["recipe"].items()})
        return cls(**raw)
