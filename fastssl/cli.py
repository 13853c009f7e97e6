"""The `fastssl` command: one verb per user task, each failing fast with a message that names the problem."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from fastssl import config as config_mod
from fastssl.checkpoint import CheckpointError
from fastssl.loaders.datasets.base import DataError


def _cmd_train(args) -> int:
    if args.resume:
        if args.config or args.set or args.out:
            raise config_mod.ConfigError("--resume continues a run with its saved config: it cannot be "
                                         "combined with -c, --set or --out")
        out = Path(args.resume)
        saved = out / "config.yaml"
        if not saved.is_file():
            raise config_mod.ConfigError(f"--resume {str(out)!r}: not a run directory (no config.yaml)")
        cfg = config_mod.load_config(saved)
    else:
        cfg = config_mod.load_config(args.config, args.set)
        out = Path(args.out) if args.out else Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    from fastssl.engine.trainer import Trainer  # after validation: a bad config fails in milliseconds

    print(f"run directory: {out}", file=sys.stderr)
    result = Trainer(cfg, out, resume=bool(args.resume)).fit()
    print(f"knn_top1={result.knn_top1:.4f} (random init: {result.knn_start:.4f})")
    return 0


def _cmd_bench_train(args) -> int:
    cfg = config_mod.load_config(args.config, args.set)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in config_mod.BACKENDS]
    if unknown or "torchvision" not in backends:
        raise config_mod.ConfigError(f"--backends {args.backends!r}: must list backends of "
                                     f"{', '.join(config_mod.BACKENDS)}, including the torchvision baseline")
    for name, minimum in (("steps", 1), ("windows", 1), ("warmup", 0)):
        if getattr(args, name) < minimum:
            raise config_mod.ConfigError(f"--{name}={getattr(args, name)}: must be >= {minimum}")
    # bench imports everything and nothing imports bench, except this dispatch, on use.
    from fastssl.bench import train_throughput

    rows = train_throughput.measure(cfg, backends, args.steps, args.windows, args.warmup,
                                    progress=lambda line: print(line, file=sys.stderr))
    paths = train_throughput.write_all(rows, Path(args.out))
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(paths[1].read_text())
    return 0


def _cmd_env(args) -> int:
    from fastssl import envinfo

    info = envinfo.collect()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastssl", description="Self-supervised image representation "
                                     "learning (SimCLR-style) at maximum throughput.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    train = verbs.add_parser("train", help="train an encoder (no config: the quickstart on the embedded "
                             "shapes data)", description="Train a self-supervised encoder.")
    train.add_argument("-c", "--config", help="YAML run config (see configs/)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set optim.lr=0.5 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<date-time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    train.set_defaults(func=_cmd_train)
    bench = verbs.add_parser("bench", help="benchmarks, each side by side with its baseline in one process",
                             description="Benchmarks: results as CSV, Markdown and PNG.")
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")
    train_bench = suites.add_parser("train", help="training images/s per data backend vs the torchvision "
                                    "baseline", description="End-to-end training throughput per backend.")
    train_bench.add_argument("-c", "--config", help="YAML run config (default: the quickstart)")
    train_bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train_bench.add_argument("--backends", default="torchvision,tensor", help="comma-separated (default: %(default)s)")
    train_bench.add_argument("--steps", type=int, default=10, help="training steps per timing window")
    train_bench.add_argument("--windows", type=int, default=7, help="timing windows per backend (median, p20, p80)")
    train_bench.add_argument("--warmup", type=int, default=3, help="untimed steps per backend first")
    train_bench.add_argument("--out", default="bench/results", help="folder for the CSV/Markdown/PNG")
    train_bench.set_defaults(func=_cmd_bench_train)
    env = verbs.add_parser("env", help="versions of torch, triton, CUDA, cuDNN, GPU, DALI, FFCV (for bug "
                           "reports)", description="Print the software and hardware environment.")
    env.add_argument("--json", action="store_true", help="print as JSON")
    env.set_defaults(func=_cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (config_mod.ConfigError, DataError, CheckpointError, FileExistsError) as e:
        print(f"fastssl {args.verb}: error: {e}", file=sys.stderr)
        return 2
