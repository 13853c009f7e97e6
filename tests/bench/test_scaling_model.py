"""bench/scaling_model.py against hand computations, and bench/scaling_bench.py end to end at a tiny size."""
import csv
import math
from pathlib import Path

import pytest
import torch

from fastssl.bench import scaling_bench
from fastssl.bench import scaling_model as m

MIB = 2 ** 20
SIMCLR_ROWS_BF16 = 2 * 4096 * 128 * 2          # views x batch x D x bytes: 2 MiB


def test_ring_within_a_node_is_nccls_model_by_hand():
    s, w = SIMCLR_ROWS_BF16, 8
    simple = 8.4e-6 + 7 * 3.4e-6 + 7 / 8 * s / 360e9
    ll = 6.6e-6 + 7 * 0.6e-6 + 7 / 8 * s / min(360e9 / 3, 87.7e9)
    assert m.protocol_seconds(s, w, m.PROTOCOLS[0]) == pytest.approx(simple)
    assert m.protocol_seconds(s, w, m.PROTOCOLS[1]) == pytest.approx(ll)
    assert m.ring_seconds(s, w) == pytest.approx(min(simple, ll))
    assert m.ring_seconds(s, 1) == 0.0


def test_ring_across_nodes_pays_network_steps_and_the_nic_bandwidth():
    s, w = 64 * MIB, 64                          # 8 nodes: 56 NVLink steps, 7 network steps
    simple = 8.4e-6 + 56 * 3.4e-6 + 7 * 14e-6 + 63 / 64 * s / 47e9
    ll = 6.6e-6 + 56 * 1e-6 + 7 * 2.7e-6 + 63 / 64 * s / min(47e9 / 4, 20.4e9)
    assert m.ring_seconds(s, w) == pytest.approx(min(simple, ll)) == pytest.approx(simple)
    assert m.allreduce_seconds(s, w) == pytest.approx(2 * simple)
    assert m.nodes(64) == 8 and m.nodes(9) == 2 and m.nodes(8) == 1


def test_bytes_gathered_per_step():
    """Forward all-gather + backward reduce-scatter of views x B x D; DINO adds its teacher's rows once."""
    for w in (2, 8, 64):
        assert m.step(m.SIMCLR, w, m.ROWS, 4).gathered == 2 * (2 * 4096 * 128 * 4) == 8 * MIB
        assert m.step(m.SIMCLR, w, m.ROWS, 2).gathered == 4 * MIB
        assert m.step(m.DINO, w, m.REPLICATED).gathered == 2 * (10 * 1024 * 256 * 2) + 2 * 1024 * 256 * 2
        assert m.step(m.DINO, w, m.IMAGES).gathered == 0.0
        assert m.step(m.DINO, w, m.IMAGES).reduced == 4 + 4 * 65536 + 4 * 65536 * 256
    assert m.step(m.DINO_PER_GPU, 16, m.REPLICATED).gathered == 2 * (10 * 1024 * 256 * 2) + 2 * 1024 * 256 * 2
    assert m.step(m.SIMCLR, 1).gathered == 0.0 and m.step(m.SIMCLR, 1).comm_s == 0.0


def test_simclr_comm_is_its_two_rings_and_the_loss_all_reduce():
    s = m.step(m.SIMCLR, 16, m.ROWS, 4)
    assert s.comm_s == pytest.approx(2 * m.ring_seconds(2 * 4096 * 128 * 4, 16) + 2 * m.ring_seconds(4, 16))


def test_contrastive_head_by_hand():
    """W = 8: 1,024 own rows x 8,192 columns, D = 128 in one chunk; 8 row blocks and 128 column blocks, each
    within one wave of 132 SMs."""
    fwd, rows_grad, cols_grad = 2 * 128 * 8192 * 128, 2 * 128 * 8192 * 256, 2 * 1024 * 64 * 256
    s = m.step(m.SIMCLR, 8)
    assert s.head_flops == 8 * fwd + 8 * rows_grad + 128 * cols_grad
    assert s.head_s == pytest.approx((fwd + rows_grad + cols_grad) / 1.9e12)
    whole = m.step(m.SIMCLR, 1)
    assert whole.head_flops == 10 * 8192 * 8192 * 128     # 2 MPD forward, 4 MPD per gradient (logits recomputed)
    assert s.head_flops == pytest.approx(whole.head_flops / 8)


def test_dino_replicated_head_by_hand_and_flat_in_w():
    """B = 1,024: 16 image blocks; per block a forward over 12 views x 65,536 prototypes; D = 256 in 2 chunks."""
    k, d = 65536, 256
    logits = 2 * 64 * k * d
    waves = [(1, logits),                            # teacher: 32 CTAs
             (1, 12 * logits),                       # forward: 16 CTAs
             (1, 2 * 64 * k * (d + 128)),            # grad teacher rows: 64 CTAs
             (3, 2 * 64 * k * (d + 128)),            # grad student rows: 320 CTAs
             (16, 12 * 2 * 1024 * 64 * (d + 128))]   # grad prototypes: 2,048 CTAs
    head = sum(n * f for n, f in waves) / 1.9e12
    for w in (1, 8, 64):
        assert m.step(m.DINO, w, m.REPLICATED).head_s == pytest.approx(head)
    assert head == pytest.approx(26.56e-3, rel=1e-3)


def test_dino_share_at_8_gpus_by_hand():
    images = 128
    encoder = images * (2 + 8 * 37 / 197 + 2 / 3) / (4900 * 4.1 / 4.6)
    s = m.step(m.DINO, 8, m.REPLICATED)
    assert s.encoder_s == pytest.approx(encoder)
    comm = (2 * m.ring_seconds(10 * 1024 * 256 * 2, 8) + m.ring_seconds(2 * 1024 * 256 * 2, 8)
            + m.allreduce_seconds(4, 8))
    assert s.comm_s == pytest.approx(comm)
    assert s.share == pytest.approx((comm + s.head_s) / (encoder + comm + s.head_s))
    assert m.first_over(m.DINO, m.REPLICATED).world == 8 and 0.1 < s.share < 0.2


def test_split_kernels_keep_the_flops_and_fill_the_gpu():
    assert m.fill(1) == 132 and m.fill(16) == 8 and m.fill(200) == 1
    split = m.proto_xent_launches(64, 65536, 256, 10, 2, k_splits=m.fill(1))
    flat = m.proto_xent_launches(64, 65536, 256, 10, 2)
    assert sum(k.ctas * k.flops_per_cta for k in split) == pytest.approx(sum(k.ctas * k.flops_per_cta for k in flat))
    assert m.launch_seconds(split) < m.launch_seconds(flat) / 10
    assert m.encoder_seconds(m.SIMCLR, 64) == pytest.approx(64 * 2 / 4900)


def test_sweep_stops_where_a_gpu_would_hold_no_image():
    assert m.sweep(m.SIMCLR) == [2 ** i for i in range(13)]
    assert m.sweep(m.DINO)[-1] == 1024
    assert math.isclose(m.step(m.SIMCLR, 64).encoder_s, m.step(m.SIMCLR_PER_GPU, 64).encoder_s)


def test_markdown_lists_every_world_and_assumption():
    text = m.markdown()
    assert all(f"\n| {w} | " in text for w in m.WORLDS)
    assert text.count("https://github.com/NVIDIA/nccl-tests/issues/") >= 3 and "| replicated | 8 |" in text


def test_concatenation_is_view_major_over_ranks():
    got = scaling_bench.concatenation(2, 4, torch.float32)
    for v in range(2):
        for w in range(2):
            mine = scaling_bench.local_rows(w, 4, 128, torch.float32)       # 2 views x 2 images
            assert torch.equal(got[v * 4 + w * 2:v * 4 + w * 2 + 2], mine[v * 2:v * 2 + 2])


@pytest.fixture
def _importable_by_workers(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))


def test_tiny_measurement(tmp_path, _importable_by_workers):
    """W = 1 and 2 at toy sizes: the gathers equal the concatenation, bytes and times are real numbers."""
    code = scaling_bench.main(["--worlds", "1,2", "--gather-batches", "8,32", "--prototypes", "16",
                               "--contrastive-batch", "8", "--dino-batch", "4", "--dino-prototypes", "32",
                               "--reps", "2", "--warmup", "0", "--out", str(tmp_path)])
    assert code == 0
    with open(tmp_path / "scaling_cpu.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    errors = {(r["shape"], r["dtype"]): float(r["median"]) for r in rows if r["metric"] == scaling_bench.ERROR}
    assert errors == {(f"W=2 B={b}", dt): 0.0 for b in (8, 32) for dt in ("fp32", "bf16")}
    sizes = {(r["provider"], r["shape"], r["dtype"]): float(r["median"]) for r in rows if r["metric"] == "bytes"}
    assert sizes == {**{(scaling_bench.GATHER, f"W=2 B={b}", dt): 2 * b * 128 * n
                        for b in (8, 32) for dt, n in (("fp32", 4), ("bf16", 2))},
                     (scaling_bench.ALL_REDUCE, "W=2 K=16", "fp32"): 4 * 16 * 256}
    timed = [r for r in rows if r["unit"] == "ms"]
    assert {(r["provider"], r["shape"]) for r in timed} == {
        *((scaling_bench.GATHER, f"W=2 B={b}") for b in (8, 32)), (scaling_bench.ALL_REDUCE, "W=2 K=16"),
        *((head, f"W={w} B={b}") for w in (1, 2) for head, b in ((scaling_bench.CONTRASTIVE, 8),
                                                                 (scaling_bench.DINO_WHOLE, 4),
                                                                 (scaling_bench.DINO_OWN, 4)))}
    assert all(0 < float(r["p20"]) <= float(r["median"]) <= float(r["p80"]) for r in timed)
    table = (tmp_path / "scaling_cpu.md").read_text()
    assert "| 2 | 32 | fp32 | 0.0 |" in table and "exact" in table
    assert (tmp_path / "scaling_cpu.png").stat().st_size > 0
