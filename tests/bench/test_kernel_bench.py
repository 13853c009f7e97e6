"""`fastssl bench kernels --kernel sim_xent` and `--kernel proto_xent` end to end on the CPU (Triton
interpreter), and their measuring parts."""
import csv
import math
import os
import subprocess
import sys
import time

import pytest
import torch

from fastssl.bench import kernel_timing, proto_xent_bench, sim_xent_bench
from fastssl.bench.harness import Row
from fastssl.cli import main
from fastssl.kernels.reference import sim_xent_reference

TINY = ["bench", "kernels", "--kernel", "sim_xent", "--sizes", "64x32", "--reps", "2", "--warmup", "0"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def markdown_row(table: str, start: str) -> list[str]:
    (line,) = [ln for ln in table.splitlines() if ln.startswith(start)]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_sim_xent_bench_rows_errors_saved_bytes_and_report(tmp_path, capsys):
    assert main(TINY + ["--providers", "triton,eager", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    rows = read_csv(tmp_path / "kernels_sim_xent_cpu.csv")
    at = {(r["provider"], r["mode"], r["metric"]): r for r in rows}
    assert {r["shape"] for r in rows} == {"2N=64 D=32"} and {r["dtype"] for r in rows} == {"fp32"}
    for provider in ("triton", "eager"):
        for mode in sim_xent_bench.MODES:
            r = at[(provider, mode, "time")]
            assert r["unit"] == "ms" and 0 < float(r["p20"]) <= float(r["median"]) <= float(r["p80"])
        assert float(at[(provider, "forward", "rel error loss")]["median"]) < 1e-5
        assert float(at[(provider, "backward", "rel error grad")]["median"]) < 1e-5
        assert f"2N=64 D=32 fp32 {provider} (ms" in err
    # Peak memory and TFLOP/s are CUDA measurements: on the CPU they are absent, not zero.
    assert not [r for r in rows if r["metric"] in ("peak extra memory", "TFLOP/s")]
    # The Triton path keeps z (q and k are one storage), the int64 instance ids, and fp32 lse and n_pos per row.
    m, d = 64, 32
    assert float(at[("triton", "forward", "saved for backward")]["median"]) == m * d * 4 + m * 8 + 2 * m * 4
    # The reference keeps at least the (2N x 2N) fp32 logits.
    assert float(at[("eager", "forward", "saved for backward")]["median"]) >= m * m * 4
    table = (tmp_path / "kernels_sim_xent_cpu.md").read_text()
    assert out.strip().endswith(table.strip().splitlines()[-1])
    assert "temperature 0.5" in table and "interpreter" in table
    for mode in sim_xent_bench.MODES:
        cells = markdown_row(table, f"| 2N=64 D=32 | fp32 | {mode} |")
        ratio = float(at[("eager", mode, "time")]["median"]) / float(at[("triton", mode, "time")]["median"])
        assert cells[-1] == (f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x")
    png = (tmp_path / "kernels_sim_xent_cpu.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_compile_provider_is_checked_and_timed(tmp_path):
    args = ["--providers", "compile", "--modes", "forward+backward", "--sizes", "32x16", "--reps", "1", "--warmup", "0"]
    assert main(TINY[:4] + args + ["--out", str(tmp_path)]) == 0
    at = {(r["mode"], r["metric"]): r for r in read_csv(tmp_path / "kernels_sim_xent_cpu.csv")}
    assert float(at[("forward", "rel error loss")]["median"]) < 1e-5
    assert float(at[("backward", "rel error grad")]["median"]) < 1e-5
    assert float(at[("forward+backward", "time")]["median"]) > 0
    assert float(at[("forward", "saved for backward")]["median"]) >= 32 * 32 * 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter is the CPU path")
@pytest.mark.parametrize("kernels_imported_first,providers", [(False, {"triton", "eager"}), (True, {"eager"})])
def test_cli_turns_on_the_interpreter_itself_or_skips_triton_with_a_note(kernels_imported_first, providers, tmp_path):
    # A fresh process without TRITON_INTERPRET: the CLI sets it before the kernels load, unless they already have.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import sys; import fastssl.kernels\n" if kernels_imported_first else "import sys\n") + (
        "from fastssl.cli import main; sys.exit(main(sys.argv[1:]))")
    args = TINY[:4] + ["--sizes", "32x16", "--reps", "1", "--warmup", "0", "--modes", "forward",
                       "--providers", "triton,eager", "--out", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert {r["provider"] for r in read_csv(tmp_path / "kernels_sim_xent_cpu.csv")} == providers
    assert ("note: skipping the triton provider" in done.stderr) == kernels_imported_first


def test_an_out_of_memory_is_recorded_and_shown_never_dropped(tmp_path, monkeypatch):
    real = sim_xent_bench.loss_fn

    def eager_runs_out(provider, ids):
        if provider == "triton":
            return real(provider, ids)

        def loss(z):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return loss

    monkeypatch.setattr(sim_xent_bench, "loss_fn", eager_runs_out)
    rows = sim_xent_bench.measure([(32, 16)], ["fp32"], list(sim_xent_bench.MODES), ["triton", "eager"], reps=1,
                                  warmup=0, device=torch.device("cpu"), progress=lambda line: None)
    eager = [r for r in rows if r.provider == "eager"]
    assert {r.metric for r in eager} == {"rel error loss", "rel error grad", "saved for backward", "time"}
    assert all(r.unit == "OOM" for r in eager) and all(r.unit != "OOM" for r in rows if r.provider == "triton")
    table = sim_xent_bench.write_all(rows, tmp_path, reps=1, warmup=0)[1].read_text()
    cells = markdown_row(table, "| 2N=32 D=16 | fp32 | forward |")
    assert cells[4:] == ["OOM", "—"]  # eager's time, then the speedup that cannot be computed
    assert markdown_row(table, "| 2N=32 D=16 | fp32 | eager |")[3:] == ["OOM", "OOM", "OOM"]


def test_gpu_report_headline_tflops_share_and_peak_memory(tmp_path):
    # Rows as an H100 run writes them (no GPU here): the report's arithmetic is checked by hand.
    where = ["NVIDIA H100 80GB HBM3", "2.x", "3.x", "13.0", "abc", "2026-01-01T00:00:00Z"]

    def row(provider, mode, metric, value, unit):
        return Row("sim_xent", provider, "2N=8192 D=128", "bf16", mode, metric, value, value, value, unit, *where)

    rows = [row("triton", "forward+backward", "time", 2.0, "ms"), row("eager", "forward+backward", "time", 7.0, "ms"),
            row("compile", "forward+backward", "time", 3.1, "ms"),
            row("triton", "forward+backward", "TFLOP/s", 400.0, "TFLOP/s"),
            row("triton", "forward+backward", "peak extra memory", 2 * 2 ** 20, "B"),
            row("eager", "forward+backward", "peak extra memory", 1536 * 2 ** 20, "B"),
            row("compile", "forward+backward", "peak extra memory", math.nan, "OOM")]
    paths = sim_xent_bench.write_all(rows, tmp_path, reps=30, warmup=3)
    assert paths[1].name == "kernels_sim_xent_nvidia_h100_80gb_hbm3.md"
    table = paths[1].read_text()
    assert "**2N=8192 D=128 bf16 forward+backward: triton vs eager 3.50x, vs torch.compile 1.55x**" in table
    assert "800 TFLOP/s" in table and "CPU run" not in table
    assert markdown_row(table, "| 2N=8192 D=128 | bf16 | forward+backward |")[3:] == [
        "2.00 [2.00, 2.00]", "7.00 [7.00, 7.00]", "3.10 [3.10, 3.10]", "3.50x", "1.55x", "400.0 (50%)",
        "2.00 / 1,536.00 / OOM"]


def test_proto_xent_bench_rows_errors_saved_bytes_and_report(tmp_path, capsys):
    vs, vt, b, k, d = 3, 2, 16, 64, 16
    assert main(["bench", "kernels", "--kernel", "proto_xent", "--sizes", f"{vs}x{vt}x{b}x{k}x{d}", "--providers",
                 "triton,eager", "--reps", "2", "--warmup", "0", "--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    rows = read_csv(tmp_path / "kernels_proto_xent_cpu.csv")
    at = {(r["provider"], r["mode"], r["metric"]): r for r in rows}
    assert {(r["shape"], r["dtype"]) for r in rows} == {(f"Vs={vs} Vt={vt} B={b} K={k} D={d}", "fp32")}
    for provider in ("triton", "eager"):
        for mode in proto_xent_bench.MODES:
            r = at[(provider, mode, "time")]
            assert r["unit"] == "ms" and 0 < float(r["p20"]) <= float(r["median"]) <= float(r["p80"])
        for (mode, metric), bound in zip(proto_xent_bench.ERRORS, (1e-6, 1e-6, 1e-5, 1e-5), strict=True):
            assert 0 < float(at[(provider, mode, metric)]["median"]) < bound, (provider, metric)
    assert not [r for r in rows if r["metric"] in ("peak extra memory", "TFLOP/s")]
    # The Triton path keeps its fp32 inputs (student, teacher, both prototype sets, the centre) and one
    # log-sum-exp per student and teacher row; the reference at least the Vs x B x K log-probabilities.
    inputs = (vs + vt) * b * d + 2 * k * d + k
    assert float(at[("triton", "forward", "saved for backward")]["median"]) == 4 * (inputs + (vs + vt) * b)
    assert float(at[("eager", "forward", "saved for backward")]["median"]) >= 4 * vs * b * k
    table = (tmp_path / "kernels_proto_xent_cpu.md").read_text()
    assert out.strip().endswith(table.strip().splitlines()[-1])
    assert "The headline case (Vs=10 Vt=2 B=256 K=65536 D=256 bf16 forward+backward; targets on one H100: >= 2x " \
           "eager and >= 1.3x torch.compile) is not in this run." in table and "interpreter" in table
    for mode in proto_xent_bench.MODES:
        cells = markdown_row(table, f"| Vs={vs} Vt={vt} B={b} K={k} D={d} | fp32 | {mode} |")
        ratio = float(at[("eager", mode, "time")]["median"]) / float(at[("triton", mode, "time")]["median"])
        assert cells[-1] == (f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x")
    assert f"Vs={vs} Vt={vt} B={b} K={k} D={d} fp32 triton (ms" in err


def test_proto_xent_gpu_report_headline_against_the_targets(tmp_path):
    where = ["NVIDIA H100 80GB HBM3", "2.x", "3.x", "13.0", "abc", "2026-01-01T00:00:00Z"]
    shape, dtype, mode = proto_xent_bench.HEADLINE

    def row(provider, metric, value, unit):
        return Row("proto_xent", provider, shape, dtype, mode, metric, value, value, value, unit, *where)

    rows = [row("triton", "time", 4.0, "ms"), row("eager", "time", 10.0, "ms"), row("compile", "time", 5.0, "ms"),
            row("triton", "TFLOP/s", 400.0, "TFLOP/s"), row("triton", "peak extra memory", 40 * 2**20, "B"),
            row("eager", "peak extra memory", 3 * 2**30, "B"), row("compile", "peak extra memory", 2 * 2**30, "B")]
    table = proto_xent_bench.write_all(rows, tmp_path, reps=10, warmup=2)[1].read_text()
    assert ("**Vs=10 Vt=2 B=256 K=65536 D=256 bf16 forward+backward: triton vs eager 2.50x, vs torch.compile 1.25x** "
            "(targets on one H100: >= 2x eager and >= 1.3x torch.compile).") in table
    assert markdown_row(table, f"| {shape} | {dtype} | {mode} |")[3:] == [
        "4.00 [4.00, 4.00]", "10.00 [10.00, 10.00]", "5.00 [5.00, 5.00]", "2.50x", "1.25x", "400.0 (50%)",
        "40.00 / 3,072.00 / 2,048.00"]


def test_chunked_float64_reference_matches_the_whole_matrix():
    z = torch.nn.functional.normalize(torch.randn(40, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    ids = torch.arange(20).repeat(2)
    loss, grad = sim_xent_bench.reference_loss_and_grad(z, ids, chunk_rows=16)  # chunks of 16, 16, 8 rows
    z64 = z.double().requires_grad_()
    whole = sim_xent_reference(z64, z64, scale=2.0, instance_ids=ids, self_mask=True)
    whole.backward()
    assert loss == pytest.approx(whole.item(), rel=1e-12)
    assert torch.allclose(grad, z64.grad, rtol=0, atol=1e-14)


def test_saved_bytes_counts_each_storage_once():
    a = torch.randn(10, 6, requires_grad=True)
    assert kernel_timing.saved_bytes(lambda x: (x * x).sum(), a) == a.numel() * 4  # x saved twice, one storage
    assert kernel_timing.saved_bytes(lambda x: (x * x).exp().sum(), a) == 2 * a.numel() * 4  # and exp's output


def test_time_calls_times_only_the_thunk_on_successive_buffers():
    seen = []

    def prepare(buffer):
        seen.append(buffer)
        time.sleep(0.2)  # untimed preparation, like the forward before a timed backward
        return lambda: time.sleep(0.005)

    samples = kernel_timing.time_calls(prepare, iter(range(10)), reps=3, warmup=2, device=torch.device("cpu"))
    assert seen == [0, 1, 2, 3, 4] and len(samples) == 3
    assert all(0.005 <= s < 0.2 for s in samples)  # the thunk's 5 ms, never the 200 ms preparation


@pytest.mark.parametrize("args,message", [
    (["--kernel", "svm"], "--kernel 'svm': must be one of sim_xent, proto_xent, ridge, augment"),
    (["--kernel", "sim_xent", "--sizes", "63x32"], "--sizes '63x32': must be small, full, or comma-separated 2NxD"),
    (["--kernel", "sim_xent", "--sizes", "big"], "--sizes 'big': must be small, full"),
    (["--kernel", "sim_xent", "--dtypes", "fp16"], "--dtypes 'fp16': must be a comma-separated list of fp32, bf16"),
    (["--kernel", "sim_xent", "--modes", "fwd"], "--modes 'fwd': must be a comma-separated list of forward, backward"),
    (["--kernel", "sim_xent", "--providers", "cudnn"], "--providers 'cudnn': must be a comma-separated list of triton"),
    (["--kernel", "sim_xent", "--reps", "0"], "--reps=0: must be >= 1"),
    (["--kernel", "sim_xent", "--warmup", "-1"], "--warmup=-1: must be >= 0"),
    (["--kernel", "proto_xent", "--sizes", "3x4x16x64x16"], "--sizes '3x4x16x64x16': must be small, full, or "
                                                            "comma-separated VsxVtxBxKxD with Vs >= 2, 1 <= Vt <= Vs"),
])
def test_bench_kernels_rejects_bad_arguments_before_any_work(args, message, capsys):
    assert main(["bench", "kernels", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is refused only without a GPU")
def test_bf16_is_refused_on_the_cpu(capsys):
    assert main(["bench", "kernels", "--kernel", "sim_xent", "--dtypes", "fp32,bf16"]) == 2
    assert "--dtypes 'fp32,bf16': bf16 needs a CUDA GPU" in capsys.readouterr().err
