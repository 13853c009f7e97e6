"""One benchmark run in its own process: `python -m fastssl.bench.peers.child SPEC.json`.

Installs the step clock, lets the peer's runner train, saves the backbone's state dict (backbone.pt,
loadable with weights_only=True into network.backbone(recipe)) and result.json: step times, peak memory,
the peer's version and what it could not express. A process per run keeps one trainer's imports,
threads and allocator out of the next one's numbers.
"""
from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import torch

from fastssl.bench.peers import runner
from fastssl.bench.peers.clock import StepClock, peak_memory_mib
from fastssl.bench.peers.profiler import StepProfiler
from fastssl.bench.peers.recipe import Spec
from fastssl.loaders import atomic


def main(spec_path: str) -> int:
    spec = Spec.load(Path(spec_path))
    module = runner(spec.peer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(spec.out)
    profiler = StepProfiler(out, spec.profile_after, spec.profile_steps) if spec.profile_steps else None
    clock = StepClock(sync_every=5).start()
    tick = time.time()
    net = module.train(spec, device)
    wall = time.time() - tick
    clock.stop()
    if profiler is not None:
        profiler.finish()
    data = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, data)
    atomic.write_bytes(out / "backbone.pt", data.getvalue())
    result = {"times": clock.times, "train_wall_s": wall, "version": module.version(),
              "substitutions": module.substitutions(spec), "device": str(device), **peak_memory_mib()}
    atomic.write_text(out / "result.json", json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
