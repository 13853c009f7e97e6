"""LARS (You et al. 2017, "Large Batch Training of Convolutional Networks") with SimCLR's semantics.

Large-batch SSL needs learning rates at which plain SGD diverges in some layers and crawls in
others; LARS scales each tensor's step by the ratio of its weight norm to its gradient norm, so every
layer moves by about the same relative amount.

The update, per parameter w with gradient g, in SimCLR's "classic momentum" form (the learning rate
sits inside the momentum buffer, so a schedule change affects only new contributions):

    g' = g + wd * w
    trust = eta * ||w|| / ||g'||      (1 when ||w|| == 0 or ||g'|| == 0)
    v = m * v + lr * trust * g'       (v starts at 0)
    w = w - v

A param group with `lars_exclude=True` (biases and BN parameters, see `fastssl.optim.param_groups`)
gets neither weight decay nor trust adaptation: v = m * v + lr * g; w = w - v.
"""
from __future__ import annotations

import torch
from torch.optim import Optimizer


def _by_device_and_dtype(params: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    """foreach kernels and the stacked norms need tensors of one device and dtype."""
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        buckets.setdefault((p.device, p.dtype), []).append(p)
    return buckets


class LARS(Optimizer):
    """LARS on top of momentum SGD; whole parameter lists per foreach op, no host synchronisation.

    Norms of all tensors come from one `torch._foreach_norm` call and the trust ratios from one
    vectorised `torch.where`; momentum, decay and the parameter update are multi-tensor foreach ops.
    Only `lr * trust * g'` (a different scalar tensor per parameter) falls back to one small kernel
    per tensor inside torch, as torch's own capturable Adam does; a fused single-launch Triton kernel
    for all of it would remove those launches.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, lars_exclude: bool = False):
        if not lr >= 0:
            raise ValueError(f"lr={lr!r}: must be >= 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum!r}: must be in [0, 1)")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay={weight_decay!r}: must be >= 0")
        if not trust_coefficient > 0:
            raise ValueError(f"trust_coefficient={trust_coefficient!r}: must be > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, lars_exclude=lars_exclude)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            for params in _by_device_and_dtype(with_grad).values():
                self._update(group, params)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(state["momentum_buffer"])
        lr = group["lr"]
        torch._foreach_mul_(bufs, group["momentum"])
        if group["lars_exclude"]:
            torch._foreach_add_(bufs, grads, alpha=lr)
        else:
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            w_norm = torch.stack(torch._foreach_norm(params))
            g_norm = torch.stack(torch._foreach_norm(grads))
            trust = torch.where((w_norm > 0) & (g_norm > 0),
                                group["trust_coefficient"] * w_norm / g_norm, torch.ones_like(w_norm))
            torch._foreach_add_(bufs, torch._foreach_mul(grads, list((lr * trust).unbind(0))))
        torch._foreach_sub_(params, bufs)
