"""Where a kernel call runs: the dispatch rule every kernel family shares.

CUDA tensors take the Triton path; CPU tensors take the torch reference, unless TRITON_INTERPRET=1
was set before this module was imported, in which case Triton's interpreter runs the same kernels on
the CPU (that is how CI tests them). `impl` lets a caller force either path.
"""
from __future__ import annotations

import os

import torch

IMPLS = ("auto", "triton", "reference")
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

try:
    import triton  # noqa: F401  (a CPU-only torch install has no triton: the reference still works)

    HAVE_TRITON = True
except ImportError:
    HAVE_TRITON = False


def use_triton(kernel: str, tensor: torch.Tensor, impl: str) -> bool:
    """True when `tensor` should go through the Triton kernel; raises when `impl` cannot be honoured."""
    if impl not in IMPLS:
        raise ValueError(f"{kernel}: impl={impl!r}: must be one of {', '.join(IMPLS)}")
    if impl == "reference":
        return False
    runnable = HAVE_TRITON and (tensor.is_cuda or (INTERPRET and tensor.device.type == "cpu"))
    if impl == "triton" and not runnable:
        raise ValueError(f"{kernel}: impl='triton' needs triton and a CUDA tensor, or TRITON_INTERPRET=1 set "
                         f"before fastssl.kernels is imported (got a {tensor.device.type} tensor, "
                         f"triton {'present' if HAVE_TRITON else 'missing'})")
    return runnable


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision for fp32 operands, following torch's own matmul setting.

    The eager reference uses torch.matmul, which is full fp32 unless the user allowed TF32; the
    kernel makes the same choice so the two compute the same thing.
    """
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernel reads. The interpreter's bf16 tl.dot is wrong, so there bf16 runs as fp32."""
    if INTERPRET and dtype == torch.bfloat16:
        return torch.float32
    return dtype
