"""StageClock: the stages of a step add up to the step, each near what it really took."""
import json
import time

import pytest
import torch

from fastssl.loaders.stages import REST, StageClock


def _sleepy_step(clock: StageClock, waits: dict[str, float]) -> None:
    names = list(waits)
    clock.start(names[0])
    for name, following in zip(names, names[1:] + [None]):
        time.sleep(waits[name])
        clock.mark(name, following)
    clock.stop()


def test_cpu_stages_measure_their_time_and_add_up_to_the_step():
    clock = StageClock(torch.device("cpu"))
    waits = {"loader": 0.03, "forward": 0.01, "backward": 0.02}
    for _ in range(3):
        _sleepy_step(clock, waits)
    steps = clock.take()
    assert len(steps) == 3 and clock.take() == []
    for step in steps:
        assert set(step) == {"loader", "forward", "backward", REST, "step"}
        for name, seconds in waits.items():
            assert seconds * 1000 <= step[name] < seconds * 1000 + 15     # sleep's overshoot, loaded machine
        assert sum(v for k, v in step.items() if k != "step") == pytest.approx(step["step"], rel=1e-9)
        assert step[REST] < 5


def test_a_running_step_waits_for_the_next_take_and_repeated_stages_add():
    clock = StageClock(torch.device("cpu"))
    clock.start("a")
    time.sleep(0.01)
    clock.mark("a")
    time.sleep(0.01)
    clock.mark("b")
    time.sleep(0.01)
    clock.mark("a")
    assert clock.take() == []                       # not stopped yet
    clock.stop()
    (step,) = clock.take()
    assert step["a"] >= 20 and 10 <= step["b"] < 20 + 15


def test_annotated_stages_are_named_ranges_in_a_profiler_trace(tmp_path):
    clock = StageClock(torch.device("cpu"), annotate=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _sleepy_step(clock, {"loader wait": 0.001, "forward": 0.001})
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    names = {event.get("name") for event in json.loads(path.read_text())["traceEvents"]}
    assert {"loader wait", "forward"} <= names


def test_a_mark_outside_a_step_is_nothing():
    clock = StageClock(torch.device("cpu"))
    clock.mark("x")
    clock.start("a")
    clock.stop()
    clock.mark("y")                                 # after the step: not a stage of it
    (step,) = clock.take()
    assert set(step) == {REST, "step"}


def test_a_loader_iterated_outside_a_step_marks_nothing():
    from fastssl.loaders.stages import StageMarks

    clock, loader = StageClock(torch.device("cpu")), StageMarks()
    loader.clock = clock
    loader.mark("loader wait")                      # no step running: ignored, no error
    clock.start("loader wait")
    loader.mark("loader wait", "x")
    clock.stop()
    (step,) = clock.take()
    assert set(step) == {"loader wait", REST, "step"}
