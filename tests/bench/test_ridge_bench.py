"""`fastssl bench kernels --kernel ridge` end to end on the CPU (Triton interpreter), its sizes and its targets."""
import csv

import pytest
import torch

from fastssl.bench import ridge_bench
from fastssl.bench.harness import Row
from fastssl.cli import main
from fastssl.config import ConfigError
from fastssl.kernels.reference import ridge_reference


def markdown_row(table: str, start: str) -> list[str]:
    """The cells of the one table line that starts with `start`."""
    (line,) = [ln for ln in table.splitlines() if ln.startswith(start)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_ridge_bench_times_every_provider_and_mode_checks_errors_and_reports(tmp_path, capsys):
    argv = ["bench", "kernels", "--kernel", "ridge", "--sizes", "2x8x16", "--reps", "2", "--warmup", "0"]
    assert main(argv + ["--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader((tmp_path / "kernels_ridge_cpu.csv").open(newline="")))
    at = {(r["provider"], r["mode"], r["metric"]): r for r in rows}
    assert {r["shape"] for r in rows} == {"T=2 n=8 D=16 C=5"} and {r["dtype"] for r in rows} == {"fp32"}
    for provider in ridge_bench.PROVIDERS:
        for mode in ridge_bench.MODES:
            r = at[(provider, mode, "time")]
            assert r["unit"] == "ms" and 0 < float(r["p20"]) <= float(r["median"]) <= float(r["p80"])
        for mode, metric in ridge_bench.ERRORS:
            assert float(at[(provider, mode, metric)]["median"]) < 1e-4, (provider, metric)
        assert f"T=2 n=8 D=16 C=5 fp32 {provider} (ms" in err
    # The Triton path keeps x, the labels (one expanded storage), its factor L (T n n) and solution (T n C).
    t, n, d, c = 2, 8, 16, 5
    assert float(at[("triton", "forward", "saved for backward")]["median"]) == 4 * (t * n * d + n * c + t * n * n
                                                                                    + t * n * c)
    table = (tmp_path / "kernels_ridge_cpu.md").read_text()
    assert out.strip().endswith(table.strip().splitlines()[-1])
    assert "| shape | dtype | mode | triton | solve | cholesky | triton vs solve | triton vs cholesky |" in table
    for mode in ridge_bench.MODES:
        cells = markdown_row(table, f"| T=2 n=8 D=16 C=5 | fp32 | {mode} |")
        ratio = float(at[("cholesky", mode, "time")]["median"]) / float(at[("triton", mode, "time")]["median"])
        assert cells[-1] == (f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x")
    assert "| 64 episodes, n = 25 | T=64 n=25 D=640 C=5 | solve, cholesky | >= 5.00x | — | not in this run |" in table
    assert "interpreter" in table
    png = (tmp_path / "kernels_ridge_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.parametrize("provider", ridge_bench.PROVIDERS)
def test_each_provider_solves_the_primal_case_too(provider):
    # n > D: triton and cholesky solve the D x D primal system, solve keeps the n x n dual; all give one W.
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(3, 20, 8, generator=gen), torch.nn.functional.one_hot(torch.arange(20) % 5, 5).float()
    y, lam = y.expand(3, 20, 5), torch.tensor(0.5)
    w = ridge_bench.solve_fn(provider, y, lam)(x)
    assert torch.allclose(w.double(), ridge_reference(x.double(), y.double(), 0.5), rtol=0, atol=1e-5)


def test_sizes_presets_and_shapes():
    assert ridge_bench.parse_sizes("full")[0] == (64, 25, 640) and len(ridge_bench.parse_sizes("full")) == 6
    assert ridge_bench.parse_sizes("64x25x640,1X512X128") == [(64, 25, 640), (1, 512, 128)]
    assert ridge_bench.label(1, 512, 128) == "T=1 n=512 D=128 C=512"  # an SSL batch: every image its own class


@pytest.mark.parametrize("spec", ["64x25", "0x25x640", "1x512x128x5", "big", "64x25xD", ""])
def test_bad_sizes_name_the_flag_and_the_rule(spec):
    with pytest.raises(ConfigError, match=rf"--sizes '{spec}': must be small, full, or comma-separated TxnxD "
                                          r"with T, n, D >= 1"):
        ridge_bench.parse_sizes(spec)


@pytest.mark.filterwarnings("ignore:No artists with labels")  # no memory rows here: the PNG's memory panel is empty
@pytest.mark.parametrize("device,verdicts", [("NVIDIA H100 80GB HBM3", ["met", "not met", "met"]),
                                             ("CPU x86_64 x2 threads", ["owed: needs a GPU"] * 3)])
def test_targets_are_judged_against_the_fastest_named_baseline(device, verdicts, tmp_path):
    where = [device, "2.x", "3.x", "13.0", "abc", "2026-01-01T00:00:00Z"]
    times = {("T=64 n=25 D=640 C=5", "triton"): 1.0, ("T=64 n=25 D=640 C=5", "solve"): 6.0,
             ("T=64 n=25 D=640 C=5", "cholesky"): 5.5, ("T=1 n=512 D=128 C=512", "triton"): 1.0,
             ("T=1 n=512 D=128 C=512", "solve"): 1.5, ("T=1 n=512 D=128 C=512", "cholesky"): 0.9}
    rows = [Row("ridge", p, s, "fp32", "forward+backward", "time", v, v, v, "ms", *where)
            for (s, p), v in times.items()]
    table = ridge_bench.write_all(rows, tmp_path, reps=30, warmup=3)[1].read_text()
    starts = ("| 64 episodes, n = 25 |", "| SSL batch vs the dual solve |",
              "| within 1.2x of cuSOLVER (primal 128) | T=1 n=512")
    cells = [markdown_row(table, start)[3:] for start in starts]
    assert cells == [[">= 5.00x", "5.50x", verdicts[0]], [">= 2.00x", "1.50x", verdicts[1]],
                     [">= 0.83x", "0.90x", verdicts[2]]]
