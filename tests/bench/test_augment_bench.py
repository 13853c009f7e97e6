"""`fastssl bench kernels --kernel augment` end to end on the CPU (Triton interpreter), and its parts."""
import csv
from types import SimpleNamespace

import torch

from fastssl.bench import augment_bench
from fastssl.cli import main
from fastssl.kernels.reference import AUGMENT_COLUMNS


def test_augment_bench_checks_every_provider_and_owes_the_bandwidth_target(tmp_path, capsys):
    argv = ["bench", "kernels", "--kernel", "augment", "--sizes", "3x16", "--reps", "2", "--warmup", "0"]
    assert main(argv + ["--out", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    rows = list(csv.DictReader((tmp_path / "kernels_augment_cpu.csv").open(newline="")))
    at = {(r["provider"], r["metric"]): r for r in rows}
    for provider in augment_bench.PROVIDERS:
        r = at[(provider, "time")]
        assert r["shape"] == "B=3 16x16" and r["unit"] == "ms" and float(r["median"]) > 0
        assert f"B=3 16x16 fp32 {provider} (ms" in err
    assert float(at[("triton", "rel error")]["median"]) < 1e-6
    assert float(at[("eager", "rel error")]["median"]) == 0.0
    assert float(at[("copy", "rel error")]["median"]) > 1            # raw bytes, not the augmented view
    assert not [r for r in rows if r["metric"] == "GB/s"]           # a CUDA measurement: absent, not zero
    table = (tmp_path / "kernels_augment_cpu.md").read_text()
    assert "owed: GB/s are measured on a GPU only" in table and out.strip().endswith(table.strip().splitlines()[-1])
    assert (tmp_path / "kernels_augment_cpu.png").read_bytes()[:4] == b"\x89PNG"


def test_peak_bandwidth_is_double_data_rate_clock_times_bus(monkeypatch):
    """An H100 SXM's HBM3: 2619 MHz, 5120-bit bus -> 3.35 TB/s, its datasheet figure."""
    props = SimpleNamespace(memory_clock_rate=2_619_000, memory_bus_width=5120)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    assert abs(augment_bench.peak_bandwidth(torch.device("cuda")) - 3.352e12) < 1e9
    assert augment_bench.peak_bandwidth(torch.device("cpu")) is None


def test_random_params_follow_simclr_rates_and_strengths():
    p = augment_bench.random_params(20000, torch.Generator().manual_seed(0), torch.device("cpu"))
    for name, rate in augment_bench.RATES.items():
        column = p[:, AUGMENT_COLUMNS.index(name)]
        assert set(column.unique().tolist()) == {0.0, 1.0} and abs(column.mean().item() - rate) < 0.015
    assert p[:, 2:5].min() >= 0.6 and p[:, 2:5].max() <= 1.4 and p[:, 5].abs().max() <= 0.1
