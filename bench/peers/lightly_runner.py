"""lightly (the library): the training loop its documentation shows, with its own losses, heads,
transforms and schedules, a torch DataLoader of torchvision's ImageFolder with worker processes.

SimCLR: backbone + SimCLRProjectionHead, NTXentLoss. BYOL: BYOLProjectionHead/BYOLPredictionHead, a
deep-copied momentum backbone and head updated by update_momentum on cosine_schedule, symmetric
NegativeCosineSimilarity. Both views use SimCLRTransform with the recipe's parameters (lightly's
BYOLTransform has fixed per-view blur and solarisation; the common recipe has neither at 32 px).
On a GPU the forward runs under bf16 autocast, as a user of the loop would add.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from fastssl.bench.peers import installed_version, not_installed
from fastssl.bench.peers.network import backbone, feature_dim
from fastssl.bench.peers.recipe import Spec

NAME = "lightly"
METHODS = ("simclr", "byol")


def version() -> str:
    return installed_version("lightly")


def unavailable() -> str | None:
    return not_installed("lightly")


def substitutions(spec: Spec) -> list[str]:
    notes = ["learning rate ends at 0 (CosineWarmupScheduler end_value=0), warm-up linear from 0"]
    if spec.recipe.method == "byol":
        notes.append("BYOL views: SimCLRTransform twice (BYOLTransform's view-specific blur/solarize fixed)")
    return notes


def _transform(spec: Spec):
    from lightly.transforms import SimCLRTransform

    r = spec.recipe
    brightness, contrast, saturation, hue = r.jitter
    return SimCLRTransform(input_size=r.res, cj_prob=r.jitter_p, cj_strength=1.0, cj_bright=brightness,
                           cj_contrast=contrast, cj_sat=saturation, cj_hue=hue, min_scale=r.crop_scale_min,
                           random_gray_scale=r.grayscale_p, gaussian_blur=0.0, hf_prob=r.flip_p, vf_prob=0.0,
                           rr_prob=0.0, normalize={"mean": list(r.mean), "std": list(r.std)})


class _SimCLR(nn.Module):
    def __init__(self, net: nn.Module, spec: Spec):
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        super().__init__()
        r = spec.recipe
        self.backbone = net
        self.head = SimCLRProjectionHead(feature_dim(net), r.projector_hidden, r.projector_out)
        self.criterion = NTXentLoss(temperature=r.temperature)

    def loss(self, views: list[torch.Tensor], step: int, total: int) -> torch.Tensor:
        z0, z1 = (self.head(self.backbone(v)) for v in views)
        return self.criterion(z0, z1)


class _BYOL(nn.Module):
    def __init__(self, net: nn.Module, spec: Spec):
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        super().__init__()
        r = spec.recipe
        self.ema_start = r.ema_start
        self.backbone = net
        self.head = BYOLProjectionHead(feature_dim(net), r.projector_hidden, r.projector_out)
        self.predictor = BYOLPredictionHead(r.projector_out, r.projector_hidden, r.projector_out)
        self.backbone_momentum = copy.deepcopy(net)
        self.head_momentum = copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.head_momentum)
        self.criterion = NegativeCosineSimilarity()

    def loss(self, views: list[torch.Tensor], step: int, total: int) -> torch.Tensor:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, total, self.ema_start, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m=m)
        update_momentum(self.head, self.head_momentum, m=m)
        p0, p1 = (self.predictor(self.head(self.backbone(v))) for v in views)
        with torch.no_grad():
            t0, t1 = (self.head_momentum(self.backbone_momentum(v)) for v in views)
        return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))


MODELS = {"simclr": _SimCLR, "byol": _BYOL}


def train(spec: Spec, device: torch.device) -> nn.Module:
    """Trains the recipe's network with lightly's loop; returns the backbone."""
    from lightly.utils.scheduler import CosineWarmupScheduler
    from torchvision.datasets import ImageFolder

    r = spec.recipe
    torch.manual_seed(r.seed)
    dataset = ImageFolder(f"{spec.data}/train", transform=_transform(spec))
    loader = torch.utils.data.DataLoader(dataset, batch_size=r.batch, shuffle=True, drop_last=True,
                                         num_workers=r.workers, pin_memory=device.type == "cuda")
    model = MODELS[r.method](backbone(r), spec).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    total = r.epochs * len(loader)
    scheduler = CosineWarmupScheduler(optimizer, warmup_epochs=int(total * r.warmup_fraction), max_epochs=total,
                                      end_value=0.0)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    step = 0
    for _ in range(r.epochs):
        for views, _label in loader:
            views = [v.to(device, non_blocking=True) for v in views]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model.loss(views, step, total)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            step += 1
    return model.backbone
