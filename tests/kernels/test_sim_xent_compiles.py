"""The sim_xent kernels compile for an H100 (sm_90) on this GPU-less machine, and fit its shared memory."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

H100_SHARED_PER_BLOCK = 227 * 1024  # bytes an sm_90 block may opt into


@pytest.mark.slow
def test_every_variant_compiles_to_sm90_and_fits_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("compile_for_gpu.py")
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    variants = [json.loads(line) for line in out.stdout.splitlines()]
    # 3 kernels x (4 tile configs in bf16 + fp16 + fp32)
    assert len(variants) == 3 * 6
    assert all(v["cubin"] > 10_000 for v in variants)
    too_big = [v for v in variants if v["shared"] > H100_SHARED_PER_BLOCK]
    assert not too_big, too_big
