"""What a resume changes beyond the config's fields: a longer run gets a schedule for its new length, and
a finished run's lost plot is drawn again."""
import math

import pytest

from fastssl.checkpoint import CheckpointError

from fastssl.cli import main
from fastssl.config import dump_yaml, load_config
from fastssl.engine.metrics import read_metrics

TINY = ["data.num_train=64", "data.num_test=32", "loader.batch_size=16", "train.epochs=3", "train.log_every=1",
        "train.precision=fp32", "train.device=cpu", "knn.k=5", "knn.every_epochs=0", "model.width=0.125",
        "model.projector_hidden=32", "model.projector_out=16", "augment.impl=reference",
        "method.loss_impl=reference", "optim.lr=0.5", "optim.warmup_epochs=1"]


def _cosine(step: int, base: float, warmup: int, total: int) -> float:
    """SimCLR's schedule, written out: linear warm-up over `warmup` steps, then cosine to 0 at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) if step < total else 0.0


def test_extending_a_finished_run_trains_the_new_steps_on_the_new_schedule(tmp_path, capsys):
    """3 epochs of 4 steps, then train.epochs raised to 5 and resumed: before the fix the restored schedule
    kept its 12-step total and the 8 new steps trained at lr 0."""
    run = tmp_path / "run"
    sets = [a for o in TINY for a in ("--set", o)]
    assert main(["train", "--out", str(run), *sets]) == 0
    cfg = load_config(run / "config.yaml", ["train.epochs=5"])
    (run / "config.yaml").write_text(dump_yaml(cfg))
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert "resuming with a changed config: train.epochs: 3 -> 5" in err
    assert "learning-rate schedule: 12 -> 20 steps, recomputed from the restored step 12: lr 0 -> 0.25" in err, err
    logged = {r["step"]: r["lr"] for r in read_metrics(run / "metrics.jsonl") if "lr" in r}
    assert sorted(logged) == list(range(1, 21))
    for step in range(13, 21):   # the lr logged after step s is the one step s + 1 (0-based s) trains with
        assert logged[step] == __import__("pytest").approx(_cosine(step, 0.5, 4, 20), rel=1e-12, abs=1e-15)
    assert all(logged[step] > 0 for step in range(13, 20))
    knn = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "knn_top1" in r]
    assert knn == [0, 12, 20]     # the first run's final score, then the extended run's


def test_resuming_a_finished_run_draws_a_missing_plot_again(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *[a for o in TINY + ["train.max_steps=2"] for a in ("--set", o)]]) == 0
    drawn = (run / "curves.png").read_bytes()
    (run / "curves.png").unlink()
    assert main(["train", "--resume", str(run)]) == 0
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len((run / "curves.png").read_bytes()) > 0.5 * len(drawn)


def test_a_checkpoint_older_than_a_config_field_resumes_at_that_fields_default():
    """Checkpoints written before model.init and knn.data existed lack them: compared as their defaults,
    not as '<absent>' (which refused every such run's resume)."""
    from fastssl import compat, methods
    from fastssl.config import Config, to_dict

    written = Config()
    methods.check(written)   # as the trainer writes it: the method named, its section typed
    saved = to_dict(written)
    del saved["model"]["init"], saved["knn"]["data"]
    assert compat.check(saved, Config(), "old.pt") == []
    saved["model"]["width"] = 0.25   # a field it does hold is still compared
    with pytest.raises(CheckpointError, match=r"model.width: 0.25 in the checkpoint, 0.125 now"):
        compat.check(saved, Config(), "old.pt")
