"""The Triton kernels compile for an H100 (sm_90) on this GPU-less machine and fit its shared memory;
the ridge kernel, which holds its whole system in registers, and the elementwise augment kernel must
also not spill them. The sim_xent and proto_xent kernels must neither spill nor load synchronously,
under the venv's triton and under triton 3.6 (the GPU machine's), which CI installs in .triton36.
For an A100 (sm_80): proto_xent as on sm_90; sim_xent compiles, copies asynchronously (cp.async) and
has a config within the chip's shared memory for every variant (its tiles are chosen for sm_90, and
some spill a few registers on sm_80)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

H100_SHARED_PER_BLOCK = 227 * 1024  # bytes an sm_90 block may opt into
A100_SHARED_PER_BLOCK = 163 * 1024  # bytes an sm_80 block may opt into
SHARED_PER_BLOCK = {90: H100_SHARED_PER_BLOCK, 80: A100_SHARED_PER_BLOCK}
TRITON_36 = Path(__file__).resolve().parents[2] / ".triton36"


def compile_family(family: str, triton_dir: Path | None = None, arch: int = 90) -> list:
    """The compile script's JSON lines for one family, under the venv's triton or the one in triton_dir."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if triton_dir is not None:
        if not triton_dir.is_dir():
            pytest.skip(f"no triton 3.6 at {triton_dir}: pip install --no-deps --target .triton36 triton==3.6.0")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(triton_dir), env.get("PYTHONPATH"))))
    script = Path(__file__).with_name("compile_for_gpu.py")
    out = subprocess.run([sys.executable, str(script), "--arch", str(arch), family], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    variants = [json.loads(line) for line in out.stdout.splitlines()]
    assert {v["arch"] for v in variants} == {f"sm_{arch}"}
    if triton_dir is not None:
        assert {v["triton"] for v in variants} == {"3.6.0"}, "the venv's triton ran, not .triton36's"
    return variants


def assert_fits_without_spills_and_async(variants: list, arch: int = 90) -> None:
    """Every variant within the chip's shared memory, without spilled registers, with asynchronous copies."""
    assert all(v["cubin"] > 10_000 for v in variants)
    too_big = [v for v in variants if v["shared"] > SHARED_PER_BLOCK[arch]]
    assert not too_big, too_big
    spilling = {(v["kernel"], v["dtype"], v["config"]): v["spills"] for v in variants if v["spills"]}
    assert not spilling, spilling
    synchronous = [(v["kernel"], v["dtype"], v["config"]) for v in variants if not v["async"]]
    assert not synchronous, synchronous


@pytest.mark.slow
@pytest.mark.parametrize("family, n_variants, must_not_spill", [
    ("ridge", 3 * 2 * (2 * 6 + 2), True),  # 3 kernels x 2 forms x (6 systems in fp32 and bf16 + fp16, bf16/fp32)
    ("augment", 2 * 3 * 4 + 2, True),  # main kernel (uint8, fp32 in) x (fp32, bf16, fp16 out) x (one pass at
                                       # 3 blocks, split) + 2 partial-sum kernels
], ids=["ridge", "augment"])
def test_every_variant_compiles_to_sm90_and_fits_the_chip(family, n_variants, must_not_spill):
    """Ridge keeps its whole system in registers: kernels/ridge.tiles() is chosen so nothing spills."""
    variants = compile_family(family)
    assert len(variants) == n_variants
    assert all(v["cubin"] > 10_000 for v in variants)
    too_big = [v for v in variants if v["shared"] > H100_SHARED_PER_BLOCK]
    assert not too_big, too_big
    if must_not_spill:
        spilling = {(v["kernel"], v["dtype"], v["config"]): v["spills"] for v in variants if v["spills"]}
        assert not spilling, spilling


@pytest.mark.slow
@pytest.mark.parametrize("triton_dir", [None, TRITON_36], ids=["venv-triton", "triton-3.6"])
def test_sim_xent_compiles_to_sm90_without_spills_and_with_async_copies(triton_dir):
    """Every tile config sim_xent may autotune to, in every dtype and both feature paths, keeps its
    tiles in registers and streams them with cp.async or TMA (see sim_xent._configs)."""
    variants = compile_family("sim_xent", triton_dir)
    # 3 kernels x 2 tile configs x (bf16, fp16, fp32 ieee, fp32 tf32) x (one feature chunk, several)
    assert len(variants) == 3 * 2 * 4 * 2
    assert_fits_without_spills_and_async(variants)


@pytest.mark.slow
def test_sim_xent_compiles_to_sm80_with_cp_async_and_a_config_that_fits():
    """On an A100 the autotuner skips a config that outgrows shared memory, so each variant needs one
    that fits; spills are not asserted here (its tiles are sm_90's: the worst, fp32 tf32 rows of 128 in
    _grad_rows_kernel, spill ~180 words on sm_80)."""
    variants = compile_family("sim_xent", arch=80)
    assert len(variants) == 3 * 2 * 4 * 2
    assert all(v["cubin"] > 10_000 and v["async"] for v in variants)
    fits = {}
    for v in variants:
        case = (v["kernel"], v["dtype"], v["config"].split(" D=")[1])
        fits[case] = fits.get(case, False) or v["shared"] <= A100_SHARED_PER_BLOCK
    assert all(fits.values()), [case for case, ok in fits.items() if not ok]


@pytest.mark.slow
@pytest.mark.parametrize("arch, triton_dir", [(90, None), (90, TRITON_36), (80, None)],
                         ids=["sm90-venv-triton", "sm90-triton-3.6", "sm80-venv-triton"])
def test_proto_xent_compiles_without_spills_and_with_async_copies(arch, triton_dir):
    """Every tile config proto_xent may autotune to, in every dtype and both feature paths, for an H100
    and an A100 (see proto_xent._configs)."""
    variants = compile_family("proto_xent", triton_dir, arch)
    # (teacher, forward, student-gradient rows of the teacher and of the student, prototypes' gradient)
    # x 2 tile configs x (bf16, fp16, fp32 ieee, fp32 tf32) x (one feature chunk, several)
    assert len(variants) == 5 * 2 * 4 * 2
    assert {v["kernel"] for v in variants} == {"_teacher_kernel", "_forward_kernel", "_grad_rows_kernel",
                                               "_grad_w_kernel"}
    assert_fits_without_spills_and_async(variants, arch)
