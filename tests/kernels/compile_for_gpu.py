"""Compiles the Triton kernels of fastssl.kernels to sm_90 (H100) or sm_80 (A100) cubins with Triton's
bundled ptxas.

Run as a script, without TRITON_INTERPRET: no GPU is needed to compile, so CI catches what the
interpreter forgives (dot shapes, dtype mismatches, shared memory, register spills).

    python compile_for_gpu.py [--arch 80] [FAMILY ...]   # sm_90 by default; families: sim_xent,
                                                          # proto_xent, ridge, augment (all when none is named)

Prints one JSON line per kernel variant: family, kernel, arch, dtype, tile config, the shared memory it
needs, its registers and spills per thread, whether it loads through asynchronous copies, and the
triton version that compiled it (PYTHONPATH=.triton36 puts triton 3.6 before the venv's). Triton's
own `n_regs` / `n_spills` are only filled in when a GPU loads the cubin, so they are read here with
Triton's bundled cuobjdump; `spills` has Triton's meaning: the thread's local memory (where ptxas puts
spilled registers) in 4-byte words. `async` is true when the SASS holds cp.async (LDGSTS) or TMA
(UTMALDG) copies, which is how a loop's loads overlap its math on sm_90 (sm_80 has cp.async only).
"""
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Iterator, NamedTuple

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FLOAT_SCALARS = ("scale", "coef", "inv_ts", "inv_tt", "inv_rows", "value_range", "threshold", "mean0", "mean1",
                 "mean2", "std0", "std1", "std2")
# the other non-constexpr scalars are i32 sizes and strides


class Variant(NamedTuple):
    kernel: object        # the @triton.jit function
    pointers: dict        # pointer argument -> element type; pointers not named here are fp32
    constexprs: dict
    options: dict         # num_warps, num_stages
    label: dict           # how the JSON line names the variant (dtype, config)
    aligned: tuple = ()   # arguments the launch sees as multiples of 16 (pointers: 16-byte aligned)


def kernels_module(name: str):
    return importlib.import_module(f"fastssl.kernels.{name}")


def precision(*dtypes: str) -> str:
    """The tl.dot input precision the runtime picks for these operand dtypes (kernels/runtime.py)."""
    promoted = TORCH_DTYPES[dtypes[0]]
    for dtype in dtypes[1:]:
        promoted = torch.promote_types(promoted, TORCH_DTYPES[dtype])
    return kernels_module("runtime").dot_precision(promoted)


def sim_xent_variants() -> Iterator[Variant]:
    """3 kernels x every GPU autotune config x (bf16, fp16, fp32 with ieee and with tf32 dots, whose
    code differs: FMA vs tensor cores) x (the widest row sim_xent takes in one chunk: D = 128, or 16
    for ieee; D = 256, in chunks), with the heaviest flags: a bias, the self mask and instance ids
    (an int64 load per column and two compares where targets need one).

    Launches are compiled as Triton specializes them for contiguous inputs whose sizes are multiples
    of 16 (SimCLR's): unit feature strides are constants, the rest 16-divisible, so loads vectorize.
    """
    sim_xent = kernels_module("sim_xent")
    cases = [(dtype, dot, d) for dtype, dot in (("bf16", "tf32"), ("fp16", "tf32"), ("fp32", "ieee"), ("fp32", "tf32"))
             for d in ((16, 256) if dot == "ieee" else (128, 256))]
    aligned = ("q_ptr", "k_ptr", "bias_ptr", "tgt_ptr", "ids_ptr", "loss_ptr", "lse_ptr", "npos_ptr", "g_ptr",
               "gmax_ptr", "dq_ptr", "dk_ptr", "dbias_ptr", "M", "P", "D", "sqm", "skm", "sdm", "row_offset")
    for kernel in (sim_xent._forward_kernel, sim_xent._grad_rows_kernel, sim_xent._grad_cols_kernel):
        args = kernel.fn.arg_names
        for config in sim_xent._configs(quick=False):
            for dtype, dot, d in cases:
                pointers = {**dict.fromkeys(("q_ptr", "k_ptr", "dq_ptr", "dk_ptr"), dtype),
                            "tgt_ptr": "i64", "ids_ptr": "i64"}
                chunks = sim_xent._chunks(d, TORCH_DTYPES[dtype], dot)
                flags = {"HAS_BIAS": True, "SELF_MASK": True, "TARGETS": False, "PRECISION": dot, **chunks,
                         **config.kwargs, **{name: 1 for name in ("sqd", "skd", "sdd") if name in args}}
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
                yield Variant(kernel.fn, pointers, flags, options,
                              {"dtype": dtype if dtype != "fp32" else f"fp32/{dot}",
                               "config": f"{config} D={d} BLOCK_D={chunks['BLOCK_D']}"},
                              tuple(name for name in aligned if name in args))


def proto_xent_variants() -> Iterator[Variant]:
    """The 4 proto_xent kernels (the student-gradient one for teacher rows and for student rows) x
    every GPU autotune config x (bf16, fp16, fp32 with ieee and with tf32 dots) x (the widest row in
    one chunk, or 16 for ieee; D = 256 in chunks, the issue's shape), with a centre and 16 view slots
    (DINO's 10 views), as the launches specialize them for contiguous inputs with 16-divisible sizes.
    fp32 rows of 128 go in chunks of 64 (proto_xent._feature_chunks), so those variants compile the
    chunked path."""
    proto = kernels_module("proto_xent")
    cases = [(dtype, dot, d) for dtype, dot in (("bf16", "tf32"), ("fp16", "tf32"), ("fp32", "ieee"), ("fp32", "tf32"))
             for d in ((16, 256) if dot == "ieee" else (128, 256))]
    operands = ("x_ptr", "y_ptr", "ws_ptr", "wt_ptr", "a_ptr", "wl_ptr", "dw_ptr")
    unit_strides = ("sxd", "syd", "swd", "std", "sad", "sld", "sod", "sdd")
    aligned = (*operands, "center_ptr", "lse_t_ptr", "lse_s_ptr", "loss_ptr", "lse_ptr", "share_ptr",
               "out_ptr", "B", "K", "D", "sxv", "sxb", "syv", "syb", "swk", "stk", "sav", "sab", "slk", "sov", "sob",
               "sdk")
    kernels = [(proto._teacher_kernel, {}), (proto._forward_kernel, {"VIEWS": 16}),
               (proto._grad_rows_kernel, {"TEACHER": True}), (proto._grad_rows_kernel, {"TEACHER": False}),
               (proto._grad_w_kernel, {})]
    for kernel, extra in kernels:
        args = kernel.fn.arg_names
        for config in proto._configs(quick=False):
            for dtype, dot, d in cases:
                pointers = dict.fromkeys(operands, dtype)
                student_rows = extra.get("TEACHER") is False
                if student_rows:
                    pointers["out_ptr"] = dtype  # the student gradient; teacher rows store fp32 shares
                chunks = proto._feature_chunks(d, TORCH_DTYPES[dtype], dot)
                # as launched: the centre is read by every kernel but the student rows' gradient
                flags = {"HAS_CENTER": not student_rows, "PRECISION": dot, **extra, **chunks, **config.kwargs,
                         **{name: 1 for name in unit_strides if name in args}}
                role = {True: " teacher rows", False: " student rows"}.get(extra.get("TEACHER"), "")
                options = {"num_warps": config.num_warps, "num_stages": config.num_stages, "maxnreg": config.maxnreg}
                yield Variant(kernel.fn, pointers, flags, options,
                              {"dtype": dtype if dtype != "fp32" else f"fp32/{dot}",
                               "config": f"{config}{role} D={d} BLOCK_D={chunks['BLOCK_D']}"},
                              tuple(name for name in aligned if name in args))


def ridge_variants() -> Iterator[Variant]:
    """The three ridge kernels (forward, adjoint solve, dZ) with the launch constants ridge.tiles()
    gives every system size m = 16..64 and target count c (fp32 and bf16, both forms); fp16 and a bf16
    x with fp32 y (ridge_solve converts x and y separately) at the largest tiles only: the kernels
    widen every load to fp32, so these differ from the full grids only in their loads (and their dot
    precision, which the grids already cover), and register pressure peaks there. dZ computes dy
    (the costlier variant) in every case."""
    ridge = kernels_module("ridge")
    sizes = [1 << b for b in range(4, triton.next_power_of_2(ridge.MAX_ON_CHIP).bit_length())]  # m: 16..64
    systems = [(m, c) for m in sizes for c in (16, 32)]
    cases = [(z, z, system) for z in ("fp32", "bf16") for system in systems]
    cases += [(z, y, systems[-1]) for z, y in (("fp16", "fp16"), ("bf16", "fp32"))]
    kernels = (("solve", ridge._ridge_kernel, {}), ("solve", ridge._ridge_adjoint_kernel, {}),
               ("grad_z", ridge._ridge_grad_z_kernel, {"NEED_DY": True}))
    for role, kernel, extra in kernels:
        for z, y, (m, c) in cases:
            launch = ridge.tiles(role, m, c)
            warps = launch.pop("num_warps")
            for dual in (True, False):
                flags = {"DUAL": dual, **extra, **launch, "PRECISION": precision(z, y)}
                yield Variant(kernel, {"z_ptr": z, "y_ptr": y}, flags, {"num_warps": warps},
                              {"dtype": z if z == y else f"{z}/{y}",
                               "config": " ".join(f"{k}={v}" for k, v in flags.items() if k != "NEED_DY")})


def augment_variants() -> Iterator[Variant]:
    """The augment kernel, both stages, for uint8 and fp32 inputs into every output dtype: in one pass
    at each block it launches (1024, 2048 and ONE_PASS_MAX pixels, with the warps colour_augment gives
    them), and split (SPLIT 8, 4 warps); the partial-sum kernel for both inputs. The op order is a
    runtime argument, so every variant holds all four ops."""
    augment = kernels_module("augment")
    blocks = [1 << b for b in range(augment.BLOCK.bit_length() - 1, augment.ONE_PASS_MAX.bit_length())]
    paths = [("one pass", True, 1, block, block // (32 * augment.PIXELS_PER_THREAD)) for block in blocks]
    paths.append(("split", False, 8, augment.BLOCK, 4))
    for x in ("u8", "fp32"):
        for out in ("fp32", "bf16", "fp16"):
            for path, one_pass, split, block, warps in paths:
                flags = {"COLOUR": True, "FINISH": True, "ONE_PASS": one_pass, "SPLIT": split, "BLOCK": block}
                yield Variant(augment._augment_kernel, {"x_ptr": x, "out_ptr": out}, flags, {"num_warps": warps},
                              {"dtype": f"{x}->{out}", "config": f"{path} BLOCK={block} warps={warps}"})
        yield Variant(augment._luma_partials_kernel, {"x_ptr": x}, {"SPLIT": 8, "BLOCK": augment.BLOCK},
                      {"num_warps": 4}, {"dtype": x, "config": "split"})


FAMILIES = {"sim_xent": sim_xent_variants, "proto_xent": proto_xent_variants, "ridge": ridge_variants,
            "augment": augment_variants}


def signature(fn, pointers: dict, constexprs: dict) -> dict:
    """Triton types of the kernel's arguments: constexprs, typed pointers, fp32 or i32 scalars."""
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name.endswith("_ptr"):
            types[name] = "*" + pointers.get(name, "fp32")
        else:
            types[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    return types


def cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([knobs.nvidia.cuobjdump.path, flag, f.name],
                              check=True, capture_output=True, text=True).stdout


def resource_usage(cubin: bytes) -> dict:
    """Registers and spills (local memory in 4-byte words) per thread, from cuobjdump -res-usage."""
    usage = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", cuobjdump(cubin, "-res-usage"))}
    return {"regs": usage["REG"], "spills": (usage["STACK"] + usage["LOCAL"]) // 4}


def async_copies(cubin: bytes) -> bool:
    """Whether the SASS copies global to shared memory asynchronously: cp.async (LDGSTS) or TMA (UTMALDG)."""
    return bool(re.search(r"\b(LDGSTS|UTMALDG)\b", cuobjdump(cubin, "-sass")))


def compile_variant(family: str, variant: Variant, arch: int = 90) -> dict:
    fn = variant.kernel
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in variant.aligned}
    source = ASTSource(fn, signature(fn, variant.pointers, variant.constexprs), variant.constexprs, attrs)
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=variant.options)
    except Exception:
        print(f"failed to compile {family} {fn.__name__} {variant.label} for sm_{arch}", file=sys.stderr)
        raise
    return {"family": family, "kernel": fn.__name__, "arch": f"sm_{arch}", **variant.label,
            "shared": compiled.metadata.shared,
            **resource_usage(compiled.asm["cubin"]), "async": async_copies(compiled.asm["cubin"]),
            "cubin": len(compiled.asm["cubin"]), "triton": triton.__version__}


def main(argv: list) -> None:
    assert not os.environ.get("TRITON_INTERPRET"), "unset TRITON_INTERPRET: this compiles for the GPU"
    arch = 90
    if argv[:1] == ["--arch"]:
        arch, argv = int(argv[1]), argv[2:]
    unknown = set(argv) - set(FAMILIES)
    assert not unknown, f"unknown kernel families {sorted(unknown)}; known: {sorted(FAMILIES)}"
    for family in argv or FAMILIES:
        for variant in FAMILIES[family]():
            print(json.dumps(compile_variant(family, variant, arch)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
