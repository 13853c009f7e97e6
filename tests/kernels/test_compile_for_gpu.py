"""The Triton kernels compile for an H100 (sm_90) on this GPU-less machine and fit its shared memory;
the ridge kernel, which holds its whole system in registers, and the elementwise augment kernel must
also not spill them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

H100_SHARED_PER_BLOCK = 227 * 1024  # bytes an sm_90 block may opt into

@pytest.mark.slow
@pytest.mark.parametrize("family, n_variants, must_not_spill", [
    ("sim_xent", 3 * 6, False),   # 3 kernels x (4 tile configs in bf16 + fp16 + fp32); spills reported only
    ("ridge", 3 * 2 * (2 * 6 + 2), True),  # 3 kernels x 2 forms x (6 systems in fp32 and bf16 + fp16, bf16/fp32)
    ("augment", 2 * 3 + 2, True),  # main kernel (uint8, fp32 in) x (fp32, bf16, fp16 out) + 2 partial-sum kernels
], ids=["sim_xent", "ridge", "augment"])
def test_every_variant_compiles_to_sm90_and_fits_the_chip(family, n_variants, must_not_spill):
    """Ridge keeps its whole system in registers: kernels/ridge.tiles() is chosen so nothing spills."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_for_gpu.py")
    out = subprocess.run([sys.executable, str(script), family], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    variants = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(variants) == n_variants
    assert all(v["cubin"] > 10_000 for v in variants)
    too_big = [v for v in variants if v["shared"] > H100_SHARED_PER_BLOCK]
    assert not too_big, too_big
    if must_not_spill:
        spilling = {(v["kernel"], v["dtype"], v["config"]): v["spills"] for v in variants if v["spills"]}
        assert not spilling, spilling
