"""`fastssl bench precision`: the error of bf16 vs fp32 operands against float64, and its outputs."""
import csv

import pytest
import torch

from fastssl.bench import operand_precision as op
from fastssl.cli import main


def test_views_are_unit_pairs_with_the_stated_cosine():
    z = op.views(2000, 64)
    assert torch.allclose(z.norm(dim=1), torch.ones(2000, dtype=torch.float64))
    cos = (z[:1000] * z[1000:]).sum(1)
    # first + 0.5 noise (noise unit, near-orthogonal in 64 dims): cosine ~ 1 / sqrt(1.25) = 0.894
    assert float(cos.mean()) == pytest.approx(1 / 1.25 ** 0.5, abs=0.01)


def test_bf16_rounding_error_matches_an_independent_computation(tmp_path, capsys):
    assert main(["bench", "precision", "--sizes", "small", "--out", str(tmp_path)]) == 0
    with open(tmp_path / "sim_xent_operands_cpu.csv", newline="") as f:
        rows = {(r["shape"], r["provider"], r["metric"]): float(r["median"]) for r in csv.DictReader(f)}
    z = op.views(256, 128)
    for tau in op.TEMPERATURES:
        exact = torch.nn.functional.cross_entropy(  # 2-view NT-Xent as a 2N-way classification, float64
            (z @ z.T / tau).fill_diagonal_(float("-inf")), (torch.arange(256) + 128) % 256)
        rounded = z.bfloat16().double()
        approx = torch.nn.functional.cross_entropy(
            (rounded @ rounded.T / tau).fill_diagonal_(float("-inf")), (torch.arange(256) + 128) % 256)
        expected = abs(float(approx - exact)) / float(exact)
        got = rows[(f"2N=256 D=128 tau={tau:g}", "bf16", "rel error loss")]
        assert got == pytest.approx(expected, rel=0.05, abs=1e-7)
        assert rows[(f"2N=256 D=128 tau={tau:g}", "fp32", "rel error loss")] < 1e-6
        assert rows[(f"2N=256 D=128 tau={tau:g}", "bf16", "rel error grad")] < op.TOLERANCE
    assert "within the bf16 tolerance" in (tmp_path / "sim_xent_operands_cpu.md").read_text()
    assert (tmp_path / "sim_xent_operands_cpu.png").stat().st_size > 5_000


def test_bad_sizes_are_refused(capsys):
    assert main(["bench", "precision", "--sizes", "huge"]) == 2
    assert "--sizes 'huge': must be one of small, full" in capsys.readouterr().err
