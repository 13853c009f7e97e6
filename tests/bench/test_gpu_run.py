"""The GPU run's command, rehearsed on the CPU: the run a GPU session makes must have run before."""
import csv
import os
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from fastssl.bench import gpu_run, gpu_targets

ROOT = Path(__file__).resolve().parents[2]


def test_rehearsal_runs_every_step_and_a_broken_step_does_not_stop_the_next(tmp_path):
    out = tmp_path / "out"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_run.py"), str(out), "--rehearse",
                           "--break", "sim_xent"], cwd=tmp_path, capture_output=True, text=True, timeout=400)
    took = time.monotonic() - start
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]     # one step failed
    assert sorted(p.name for p in out.iterdir()) == ["gpu_run.log", "results.tar.gz", "summary.md"]
    summary = (out / "summary.md").read_text()
    status = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines()
              if line.count("|") == 4 and not line.startswith("|---")}
    assert [s for s in status if s != "step"] == gpu_run.STEP_NAMES
    assert status["sim_xent"] == "failed"
    assert all(status[s] == "ok" for s in gpu_run.STEP_NAMES if s != "sim_xent"), status
    assert "sim_xent broken on purpose" in (out / "gpu_run.log").read_text()
    # every target row is there; the ones a CPU can measure carry a number and the CSV row behind it
    targets = [line for line in summary.splitlines() if line.count("|") == 6 and not line.startswith("|---")][1:]
    names = [t.split("|")[1].strip() for t in targets]
    assert any(n.startswith("tensor loader (random 2x32x32px") for n in names)
    assert any(n.startswith("training step, ResNet-50") for n in names)
    (vit,) = [t for t in targets if t.split("|")[1].strip().startswith("training step, ViT-S/16")]
    assert "images/s" in vit and "tensor timm/vit_small_patch16_224 {img_size: 32" in vit   # rehearsal: 32 px
    assert any(n.startswith("ridge SSL batch vs the dual solve (T=1 n=512") for n in names)
    assert any(n.startswith("proto_xent fwd+bwd vs torch.compile (Vs=3 Vt=2 B=16 K=128 D=16 fp32)") for n in names)
    assert "(NOT met: rehearsal sizes, no verdict)" in summary or "(met: rehearsal sizes, no verdict)" in summary
    with tarfile.open(out / "results.tar.gz") as tar:
        members = tar.getnames()
    for expected in ("env/env.json", "tests/gpu-tests.xml", "loader/loader_cpu.csv",
                     "train_resnet18/train_throughput_cpu.png", "ridge/kernels_ridge_cpu.csv",
                     "train_vit_small/train_backbones_cpu.csv", "proto_xent/kernels_proto_xent_cpu.csv"):
        assert expected in members, members
    assert not any(m.startswith("sim_xent/") for m in members)
    assert took < 180, f"the rehearsal took {took:.0f} s (the acceptance: under 3 minutes on 2 cores)"


def test_a_step_past_its_cap_is_killed_with_its_children(tmp_path):
    log = gpu_run.Log(tmp_path / "log")
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(c.pid)); print('started', flush=True); time.sleep(60)")
    start = time.monotonic()
    code, seconds = gpu_run.run_process([sys.executable, "-c", script], 2, dict(os.environ), log)
    assert code is None and seconds < 2 + gpu_run.KILL_GRACE + 3 and time.monotonic() - start < 12
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert "  started" in (tmp_path / "log").read_text()


def test_the_deadline_skips_steps_it_cannot_start(tmp_path, monkeypatch):
    py = sys.executable
    monkeypatch.setattr(gpu_run, "install", lambda run, env, log: gpu_targets.Outcome("install", "ok", "stub"))
    monkeypatch.setattr(gpu_run, "STEPS", [
        gpu_run.Step("first", 30, lambda run: [py, "-c", "import time; time.sleep(2)"]),
        gpu_run.Step("second", 30, lambda run: [py, "-c", "print('never')"])])
    assert gpu_run.main([str(tmp_path), "--deadline", "16"]) == 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| first | ok |" in summary and "| second | skipped | deadline (" in summary
    assert "never" not in (tmp_path / "gpu_run.log").read_text()


def test_a_step_needing_a_missing_module_is_skipped_and_a_carried_wheel_provides_it(tmp_path, monkeypatch):
    """The GPU image has no timm: the ViT step is skipped with a log line saying why, unless the
    package's pure-Python wheel is carried in .wheels/, which the steps then import from the zip."""
    py = sys.executable
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "carried_pkg-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("carried_pkg/__init__.py", "WHO = 'from the carried wheel'\n")
    monkeypatch.setattr(gpu_run, "install", lambda run, env, log: gpu_targets.Outcome("install", "ok", "stub"))
    monkeypatch.setattr(gpu_run, "WHEELS", tmp_path / "none")
    monkeypatch.setattr(gpu_run, "STEPS", [
        gpu_run.Step("plain", 30, lambda run: [py, "-c", "print('plain ran')"]),
        gpu_run.Step("needy", 30, lambda run: [py, "-c", "import carried_pkg; print(carried_pkg.WHO)"],
                     needs=("carried_pkg",))])
    assert gpu_run.main([str(tmp_path / "a"), "--deadline", "120"]) == 0
    summary, log = (tmp_path / "a" / "summary.md").read_text(), (tmp_path / "a" / "gpu_run.log").read_text()
    assert "| plain | ok |" in summary and "| needy | skipped | needs carried_pkg, not importable here" in summary
    assert "## needy: skipped, needs carried_pkg, not importable here (carry its wheel in none/)" in log
    monkeypatch.setattr(gpu_run, "WHEELS", wheels)
    assert gpu_run.main([str(tmp_path / "b"), "--deadline", "120"]) == 0
    assert "| needy | ok |" in (tmp_path / "b" / "summary.md").read_text()
    assert "  from the carried wheel" in (tmp_path / "b" / "gpu_run.log").read_text()


def test_the_vit_step_is_vit_small_at_224_px_in_bf16_and_needs_timm(tmp_path):
    """The real sizes, which no rehearsal runs: the config's 224 px and bf16, the model by its plain name."""
    (step,) = [s for s in gpu_run.STEPS if s.name == "train_vit_small"]
    assert step.needs == ("timm",)
    real = step.command(gpu_run.Run(["python"], tmp_path, rehearse=False, gpu=True))
    assert real[real.index("--model") + 1] == "timm/vit_small_patch16_224" and "loader.batch_size=128" in real
    assert not any(a.startswith(("data.image_size", "train.precision")) for a in real)
    assert "configs/imagenet_resnet50.yaml" in real[real.index("-c") + 1]   # 224 px, bf16


def test_the_symlink_overlay_imports_every_subpackage_without_pip(tmp_path):
    """Where pip cannot build (no setuptools), the package is laid out as setup.py would install it."""
    site = gpu_run._overlay(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = "import fastssl.kernels, fastssl.loaders, fastssl.bench.gpu_targets, fastssl; print(fastssl.__file__)"
    out = subprocess.run([sys.executable, "-P", "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(site / "fastssl" / "__init__.py")


@pytest.mark.parametrize("argv,message", [
    (["--cap", "ridge"], "--cap 'ridge': must be STEP=SECONDS"),
    (["--cap", "nope=3"], "--cap 'nope=3': STEP must be one of install, env"),
    (["--break", "nope"], "--break ['nope']: must be one of"),
    (["--deadline", "0"], "--deadline 0.0: must be > 0"),
])
def test_bad_arguments_name_the_rule(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        gpu_run.main([str(tmp_path), *argv])
    assert message in capsys.readouterr().err


FIELDS = ["benchmark", "provider", "shape", "dtype", "mode", "metric", "median", "p20", "p80", "unit"]


def _write(folder: Path, name: str, rows: list[tuple]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIELDS)
        for row in rows:
            writer.writerow([*row[:6], row[6], row[6], row[6], row[7]])


def test_targets_read_gpu_rows_as_the_issue_states_them(tmp_path):
    """GPU-shaped rows (which no CPU run writes) give the verdicts computed here by hand."""
    fb = "forward+backward"
    _write(tmp_path / "sim_xent", "kernels_sim_xent_nvidia_h200.csv", [
        ("sim_xent", "triton", "2N=8192 D=128", "bf16", fb, "time", 0.5, "ms"),
        ("sim_xent", "eager", "2N=8192 D=128", "bf16", fb, "time", 2.0, "ms"),
        ("sim_xent", "compile", "2N=8192 D=128", "bf16", fb, "time", 0.6, "ms")])
    m, d = 131072, 128
    _write(tmp_path / "sim_xent_memory", "kernels_sim_xent_nvidia_h200.csv", [
        ("sim_xent", "triton", f"2N={m} D={d}", "bf16", fb, "peak extra memory", 3 * m * d * 2, "B"),
        ("sim_xent", "eager", f"2N={m} D={d}", "bf16", fb, "peak extra memory", "nan", "OOM")])
    px = "Vs=10 Vt=2 B=256 K=65536 D=256"
    _write(tmp_path / "proto_xent", "kernels_proto_xent_nvidia_h200.csv", [
        ("proto_xent", "triton", px, "bf16", fb, "time", 4.0, "ms"),
        ("proto_xent", "eager", px, "bf16", fb, "time", 12.0, "ms"),
        ("proto_xent", "compile", px, "bf16", fb, "time", 5.0, "ms"),
        ("proto_xent", "triton", px, "bf16", fb, "peak extra memory", 40 * 2**20, "B"),
        ("proto_xent", "eager", px, "bf16", fb, "peak extra memory", 3000 * 2**20, "B")])
    _write(tmp_path / "ridge", "kernels_ridge_nvidia_h200.csv", [
        ("ridge", p, "T=64 n=25 D=640 C=5", "fp32", fb, "time", t, "ms")
        for p, t in (("triton", 0.1), ("solve", 0.9), ("cholesky", 0.45))] + [
        ("ridge", p, "T=1 n=512 D=128 C=512", "fp32", fb, "time", t, "ms") for p, t in (("triton", 1.0), ("solve", 3.0))])
    _write(tmp_path / "augment", "kernels_augment_nvidia_h200.csv", [
        ("augment", "triton", "B=256 224x224", "bf16", "forward", "GB/s", 3300.0, "GB/s")])
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "env.json").write_text('{"gpu": "NVIDIA H200", "peak_dram_gb_s": 4800.0}')
    _write(tmp_path / "loader", "loader_nvidia_h200.csv", [
        ("loader", "tensor", "random 2x32x32px 12 workers", "uint8", "steady state", "images/s", 150000.0, "img/s"),
        ("loader", "torchvision", "random 2x32x32px 12 workers", "uint8", "steady state", "images/s", 15000.0,
         "img/s")])
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "gpu-tests.xml").write_text(
        '<testsuites><testsuite tests="42" failures="1" errors="0" skipped="2"/></testsuites>')
    outcomes = [gpu_targets.Outcome(s, "ok", "") for s in ("tests", "sim_xent", "sim_xent_memory", "proto_xent",
                                                          "ridge", "augment", "loader")]
    header = gpu_targets.Header("abc", False, 530, "now", 400)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:6]]
            for line in gpu_targets.summary(header, outcomes, tmp_path).splitlines() if line.count("|") == 6}
    assert rows["pytest -m gpu"][1:3] == ["39 passed, 1 failed, 0 errors, 2 skipped", "NOT met"]
    (eager,) = [v for k, v in rows.items() if k.startswith("sim_xent fwd+bwd vs eager")]
    (compiled,) = [v for k, v in rows.items() if k.startswith("sim_xent fwd+bwd vs torch.compile")]
    assert eager[1:3] == ["4.00x (0.5 vs 2 ms)", "met"] and compiled[1:3] == ["1.20x (0.5 vs 0.6 ms)", "NOT met"]
    (memory,) = [v for k, v in rows.items() if k.startswith("sim_xent extra memory")]
    assert memory[1:3] == ["96 MiB (eager: OOM)", "met"]           # 3 M D 2 bytes = 96 MiB <= 4 M D 2 + ...
    (px_eager,) = [v for k, v in rows.items() if k.startswith("proto_xent fwd+bwd vs eager")]
    (px_compiled,) = [v for k, v in rows.items() if k.startswith("proto_xent fwd+bwd vs torch.compile")]
    assert px_eager[1:3] == ["3.00x (4 vs 12 ms)", "met"] and px_compiled[1:3] == ["1.25x (4 vs 5 ms)", "NOT met"]
    # bf16 gradients (10 * 256 * 256 + 65536 * 256) * 2 B = 33.25 MiB, fp32 shares 2 * 256 * 256 * 4 B = 0.5 MiB,
    # 16 * 12 * 256 + 8 * 65536 B = 0.55 MiB, 8 MiB slack: 42 MiB
    (px_memory,) = [v for k, v in rows.items() if k.startswith("proto_xent extra memory")]
    assert px_memory == ["<= 42 MiB", "40 MiB (eager: 3,000 MiB)", "met",
                         f"kernels_proto_xent_nvidia_h200.csv: triton / {px} / bf16 / {fb} / peak extra memory"]
    (episodes,) = [v for k, v in rows.items() if k.startswith("ridge few-shot episodes")]
    assert episodes[0] == "triton >= 5x solve and cholesky" and episodes[1:3] == ["4.50x (0.1 vs 0.45 ms)", "NOT met"]
    (ssl,) = [v for k, v in rows.items() if k.startswith("ridge SSL batch")]
    assert ssl[1:3] == ["3.00x (1 vs 3 ms)", "met"]
    assert rows["ridge large system vs cuSOLVER"][1:3] == ["not measured", "—"]
    (aug,) = [v for k, v in rows.items() if k.startswith("augment kernel")]
    assert aug[1:3] == ["69% (3,300 of 4,800 GB/s)", "NOT met"]
    (loader,) = [v for k, v in rows.items() if k.startswith("tensor loader")]
    assert loader[1:3] == ["150,000 images/s; 10.0x torchvision", "met"]


def test_peers_suite_rehearsal_runs_every_trainer_and_judges_the_ratio(cifar10_jpeg_root, tmp_path):
    """`--suite peers` as a GPU session runs it, at tiny sizes: every step ok, each peers table has
    fastssl and lightly rows and the summary states fastssl's ratio to the fastest peer."""
    pytest.importorskip("lightly")
    out = tmp_path / "out"
    env = {**os.environ, "FASTSSL_PEER_DATA": str(cifar10_jpeg_root)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_run.py"), str(out), "--suite", "peers",
                           "--rehearse"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (out / "summary.md").read_text()
    status = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines()
              if line.count("|") == 4 and not line.startswith("|---")}
    assert {s: status[s] for s in gpu_run.step_names("peers")} == {s: "ok" for s in gpu_run.step_names("peers")}
    for name in ("ResNet-18, 32 px", "ResNet-50, 224 px"):
        assert f"| simclr, {name} | fastssl >= 2x the fastest peer | " in summary
    with tarfile.open(out / "results.tar.gz") as tar:
        members = tar.getnames()
        table = tar.extractfile("peers_resnet50/peers_resnet50.md").read().decode()
    assert "peers_resnet18/peers_resnet18.csv" in members
    assert "| lightly 1.6.0 | simclr | 0.125 |" in table and "resnet50 (standard stem) at 64 px" in table


def test_peers_target_is_fastssls_fastest_backend_over_the_fastest_peer(tmp_path):
    folder = tmp_path / "peers_resnet18"
    folder.mkdir()
    rows = [("fastssl:tensor", "simclr", "9000", "ok"), ("fastssl:torchvision", "simclr", "3000", "ok"),
            ("lightly", "simclr", "2000", "ok"), ("lightly-train", "simclr", "4000", "ok"),
            ("lightly-train", "byol", "", "not run"), ("fastssl:tensor", "byol", "5000", "ok"),
            ("lightly", "byol", "2600", "ok")]
    with open(folder / "peers.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trainer", "method", "ips_median", "status"])
        writer.writerows(rows)
    targets = {t.measurement: t for t in gpu_targets.peers("ResNet-18, 32 px")(folder)}
    simclr, byol = targets["simclr, ResNet-18, 32 px"], targets["byol, ResNet-18, 32 px"]
    assert simclr.met is True and simclr.result.startswith("2.25x (fastssl:tensor 9,000 vs lightly-train 4,000")
    assert byol.met is False and byol.result.startswith("1.92x (fastssl:tensor 5,000 vs lightly 2,600")
