"""The profile's statistics, verdict and advice, from stage timings given here (no training)."""
import pytest

from fastssl.config import ConfigError
from fastssl.profile.report import BackendProfile, judge, markdown, stage_stats
from fastssl.profile.run import check_arguments

ORDER = ["loader wait", "forward", "head", "rest"]


def _profile(backend: str, steps: list[dict], batch: int = 64, workers: int = 2,
             views: str = "2x32px") -> BackendProfile:
    step, stages = stage_stats(steps, ORDER)
    wall = sum(s["step"] for s in steps) / len(steps)
    return BackendProfile(backend, len(steps), batch, views, step, wall, wall, batch * 1000 / wall, stages, workers)


def _steps(wait: float, forward: float, head: float, n: int = 10) -> list[dict]:
    return [{"loader wait": wait + i * 0.1, "forward": forward, "head": head, "rest": 0.5,
             "step": wait + i * 0.1 + forward + head + 0.5} for i in range(n)]


def test_statistics_and_shares_add_up():
    step, stages = stage_stats(_steps(10, 5, 4), ORDER)
    assert [s.name for s in stages] == ORDER
    assert sum(s.share for s in stages) == pytest.approx(1.0)
    wait = stages[0]
    assert wait.median_ms == pytest.approx(10.45) and wait.p10_ms == pytest.approx(10.09)
    assert wait.p90_ms == pytest.approx(10.81)
    assert step.median_ms == pytest.approx(19.95)
    with pytest.raises(ValueError, match="no timed steps"):
        stage_stats([], ORDER)


def test_input_bound_verdict_quotes_the_wait_and_the_faster_backend():
    slow, fast = _profile("torchvision", _steps(30, 5, 4)), _profile("dali", _steps(2, 5, 4))
    judge([slow, fast], cores=16)
    assert slow.verdict.startswith("input-bound: the loader wait is 76% of the step")
    ratio = fast.images_per_s / slow.images_per_s
    assert f"the `dali` backend delivered {ratio:.1f}x the images/s of `torchvision`" in slow.advice[0]
    assert "loader.workers=2 of 16 cores; the loader waited 76% of the step" in slow.advice[1]
    assert fast.verdict.startswith("compute-bound: the loader wait is 21% of the step")
    assert "top stages: forward 42%, head 33%, loader wait 21%" in fast.verdict


def test_a_slow_head_is_the_top_stage_and_no_unmeasured_advice():
    p = _profile("tensor", _steps(1, 3, 20), views="2x32px+6x16px")
    judge([p], cores=2)
    assert "top stages: head 80%, forward 12%, loader wait 6%" in p.verdict
    assert p.advice == ["the step is spent in head (80%): faster input would save at most the 6% the loader wait takes"]
    text = markdown([p], ["# t"])
    assert "| head | 20.00 | 20.00 | 20.00 | 80.2% | - |" in text and "Verdict: compute-bound" in text
    assert "the stages sum to 24.9 ms per step (mean) against 24.9 ms of wall time" in text
    assert "over 10 steps of 64 images, views 2x32px+6x16px;" in text      # multi-crop: the views' sizes


@pytest.mark.parametrize("backends,steps,warmup,message", [
    ([], 5, 1, "--backends: must name at least one backend"),
    (["tensr"], 5, 1, "--backends: 'tensr' is not a backend"),
    (["tensor"], 0, 1, "--steps=0: must be in [1, 100000]"),
    (["tensor"], 5, -1, "--warmup=-1: must be in [0, 100000]"),
])
def test_bad_arguments_fail_before_any_work(backends, steps, warmup, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check_arguments(backends, steps, warmup)


def test_a_backend_whose_package_is_missing_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ffcv" else real(name, *a))
    with pytest.raises(ConfigError, match=r"--backends: ffcv needs the ffcv package, which is not installed"):
        check_arguments(["tensor", "ffcv"], 5, 1)


def test_a_loader_that_slows_the_model_down_is_named_with_both_times():
    quiet, busy = _profile("tensor", _steps(1, 5, 1)), _profile("dali", _steps(1, 10, 1))
    judge([quiet, busy], cores=2)
    assert any(a.startswith("forward + backward took 2.0x as long as with `tensor` in this run (10 vs 5 ms per step)")
               for a in busy.advice)
    assert not any("forward + backward" in a for a in quiet.advice)
