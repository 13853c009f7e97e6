"""Device and mixed-precision choices: bf16 where the GPU has it, fp16 + loss scaling otherwise, fp32 on CPU."""
from __future__ import annotations

import contextlib

import torch

from fastssl.config import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda': no CUDA GPU is available on this machine")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def view_dtype(loader_dtype: str, precision: str) -> torch.dtype:
    """The dtype the loader writes views in: loader.dtype, or with "auto" the training precision's
    (bf16 views under bf16 autocast: half the bytes from the augment kernel to the first conv)."""
    if loader_dtype == "auto":
        return DTYPES.get(precision, torch.float32)
    dtype = getattr(torch, loader_dtype)
    if dtype != torch.float32 and DTYPES.get(precision) != dtype:
        raise ConfigError(f"loader.dtype={loader_dtype!r}: half-precision views need the training precision "
                          f"of the same dtype, and train.precision resolved to {precision} on this device")
    return dtype


def loss_operand_dtype(loss_dtype: str, precision: str) -> torch.dtype:
    """The dtype the heads feed the fused similarity loss. bf16 under bf16 training ("auto"): its
    products are exact and its sums fp32, and `fastssl bench precision` measured its error against
    float64 within bf16's tolerance (bench/results/sim_xent_operands_cpu.md), where fp32 operands
    would run the kernel's slowest dot products."""
    if loss_dtype == "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[loss_dtype]


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling only for fp16, whose range underflows small gradients; bf16 has fp32's range."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
