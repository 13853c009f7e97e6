"""Compiles every Triton kernel of sim_xent to an sm_90 (H100) cubin with Triton's bundled ptxas.

Run as a script, without TRITON_INTERPRET: no GPU is needed to compile, so CI catches what the
interpreter forgives (dot shapes, dtype mismatches, shared memory). Prints one JSON line per kernel
variant: name, dtype, tile config and the shared memory it needs.
"""
import importlib
import json
import os
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

SCALAR_POINTERS = {"tgt_ptr": "*i64", "ids_ptr": "*i64"}  # the other non-operand pointers are fp32


def signature(fn, operand: str, constexprs: dict) -> dict:
    """Triton types of the kernel's arguments: operands in `operand`, per-row buffers fp32, sizes i32."""
    operands = ("q_ptr", "k_ptr", "dq_ptr", "dk_ptr")
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = f"*{operand}" if name in operands else SCALAR_POINTERS.get(name, "*fp32")
        else:
            types[name] = "fp32" if name == "scale" else "i32"
    return types


def main() -> None:
    assert not os.environ.get("TRITON_INTERPRET"), "unset TRITON_INTERPRET: this compiles for the GPU"
    sim_xent = importlib.import_module("fastssl.kernels.sim_xent")
    target = GPUTarget("cuda", 90, 32)
    cases = [("bf16", config) for config in sim_xent._configs()]
    cases += [(dtype, sim_xent._configs()[0]) for dtype in ("fp16", "fp32")]
    for kernel in (sim_xent._forward_kernel, sim_xent._grad_rows_kernel, sim_xent._grad_cols_kernel):
        for dtype, config in cases:
            flags = {"HAS_BIAS": True, "SELF_MASK": True, "TARGETS": dtype != "bf16",
                     "BLOCK_D": 128, "PRECISION": "ieee" if dtype == "fp32" else "tf32", **config.kwargs}
            compiled = triton.compile(ASTSource(kernel.fn, signature(kernel.fn, dtype, flags), flags), target=target,
                                      options={"num_warps": config.num_warps, "num_stages": config.num_stages})
            print(json.dumps({"kernel": kernel.fn.__name__, "dtype": dtype, "config": str(config),
                              "shared": compiled.metadata.shared, "cubin": len(compiled.asm["cubin"])}))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
