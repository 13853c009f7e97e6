"""The `fastssl` command: one verb per user task, each failing fast with a message that names the problem."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fastssl import config as config_mod
from fastssl.export import formats as export_formats   # torch-free: the files of fastssl/export/formats

# Errors that carry a complete one-line message (bad input, or a run's failure such as a diverged loss,
# a full disk or a metrics file changed by hand): printed without a traceback, exit code 2. By module,
# so that `fastssl --help` and a config error import neither torch nor the loaders: an error class can
# only have been raised if its module was imported.
USER_ERRORS = {"fastssl.checkpoint": "CheckpointError", "fastssl.engine.metrics": "MetricsError",
               "fastssl.engine.nonfinite": "NonFiniteError", "fastssl.loaders.atomic": "NoSpaceError",
               "fastssl.loaders.datasets.base": "DataError", "fastssl.export": "ExportError",
               "fastssl.engine.rundir": "RunDirError"}
# `fastssl data check/index --images`: the data.dataset=images reader's listing, not class folders.
IMAGES_HELP = ("PATH is a data.dataset=images source: unlabelled image files in a folder at any depth (sub-folders "
               "are not classes), or a .txt file listing one image path per line")


def _user_errors() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[module], name) for module, name in USER_ERRORS.items() if module in sys.modules]
    return (config_mod.ConfigError, FileExistsError, *loaded)


def _writable_run_dir(out: Path) -> None:
    """Create the run directory and write a file in it now: an unwritable --out must fail in
    milliseconds, not with a traceback after the data are built."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out) as probe:
            probe.write(b"probe")
    except OSError as e:
        raise config_mod.ConfigError(f"run directory {config_mod.shown(str(out))}: cannot be written "
                                     f"({e.strerror or e})") from None


def _cmd_train(args) -> int:
    from fastssl import api

    if args.resume:
        if args.config or args.set or args.out:
            raise config_mod.ConfigError("--resume continues a run with its saved config: it cannot be "
                                         "combined with -c, --set or --out")
        out = Path(args.resume)
        cfg = api.saved_config(out, "--resume")
    else:
        cfg = config_mod.load_config(args.config, args.set)
        out = Path(args.out) if args.out else None    # None: a new runs/<date-time>, made unique
    # The trainer makes and locks the folder once the rules that need torch have passed: a refused run
    # leaves no folder, and a folder in use by another process is refused before any data is read.
    from fastssl.engine.preemption import EXIT_PREEMPTED, Preempted

    try:
        run = api.train_config(cfg, out, resume=bool(args.resume), announce=lambda line: print(line, file=sys.stderr),
                               accept_data_change=args.accept_data_change)
    except Preempted as e:   # saved: the launcher requeues on this exit code (fastssl launch slurm)
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"fastssl train: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    if run.summary:   # under torchrun: one result line, rank 0's
        print(run.summary)
    return 0


def _cmd_launch_slurm(args) -> int:
    from fastssl.launch import slurm

    cfg = config_mod.load_config(args.config, args.set)   # checked again at the job's world size
    job = slurm.SlurmJob(out=Path(args.out).resolve(), nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                         cpus_per_task=args.cpus_per_task, time=args.time, warn_s=args.warn_seconds,
                         max_restarts=args.max_restarts, partition=args.partition, account=args.account,
                         index_dir=Path(args.index_dir).resolve() if args.index_dir else None,
                         sbatch=tuple(args.sbatch))
    script = slurm.write(job, cfg, shlex.join(["fastssl", *args.argv]))
    print(f"wrote {script} ({job.nodes} node(s) x {job.gpus_per_node} GPU(s))")
    if not args.submit:
        print(f"submit it with:\n  sbatch {script}")
        return 0
    print(slurm.submit(script))
    return 0


def _launch_parser(verbs) -> None:
    launch = verbs.add_parser("launch", help="write the job file that runs `fastssl train` on a cluster scheduler",
                              description="Job files for cluster schedulers.")
    targets = launch.add_subparsers(dest="scheduler", required=True, metavar="SCHEDULER")
    slurm = targets.add_parser("slurm", help="an sbatch script: one torchrun agent per node, requeued and resumed "
                               "when SLURM warns of the job's end", description="Write RUN/slurm.sbatch and "
                               "RUN/slurm.yaml (the resolved config) for `sbatch`.")
    slurm.add_argument("-c", "--config", action="append", help="YAML run config, repeatable (as fastssl train)")
    slurm.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config value")
    slurm.add_argument("--out", required=True, help="the run folder, on storage every node sees (the job resumes "
                       "from it after a requeue)")
    slurm.add_argument("--nodes", type=int, default=1)
    slurm.add_argument("--gpus-per-node", type=int, default=8, help="processes per node, one per GPU")
    slurm.add_argument("--cpus-per-task", type=int, default=64, help="CPU cores per node (the data loaders')")
    slurm.add_argument("--time", default="24:00:00", help="SLURM's time limit, [days-]hours:minutes:seconds")
    slurm.add_argument("--warn-seconds", type=int, default=120, help="SIGUSR1 this long before the end: the "
                       "time to finish a step and save (default: %(default)s)")
    slurm.add_argument("--max-restarts", type=int, default=3, help="torchrun restarts after a worker fails")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--index-dir", help="FASTSSL_INDEX_DIR for the job: where the dataset index is built "
                       "once, on shared storage (default: the users' cache folder)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                       help="one more sbatch option, e.g. --sbatch=--constraint=h100 (repeatable)")
    slurm.add_argument("--submit", action="store_true", help="submit the script with sbatch once written")
    slurm.set_defaults(func=_cmd_launch_slurm)


def _backends(value: str, need_baseline: bool = True) -> list[str]:
    """--backends: known backends, comma-separated; the torchvision baseline among them where the
    benchmark's point is the ratio to it (the loader's), optional where absolute images/s answer
    the question (training throughput on a GPU, where the baseline only spends the time limit)."""
    backends = [b.strip() for b in value.split(",") if b.strip()]
    unknown = [b for b in backends if b not in config_mod.BACKENDS]
    if unknown or not backends or (need_baseline and "torchvision" not in backends):
        raise config_mod.ConfigError(f"--backends {value!r}: must list backends of "
                                     f"{', '.join(config_mod.BACKENDS)}"
                                     + (", including the torchvision baseline" if need_baseline else ""))
    return backends


def _bench_models(cfg: config_mod.Config, specs: list[str]) -> list[config_mod.Config] | None:
    """--model ARCH or ARCH={kwargs as YAML}, repeatable: cfg with that model.arch and exactly those
    model.kwargs (the config's own kwargs are for its own arch), checked by the config's rules."""
    models, seen = [], set()
    for spec in specs:
        arch, given, raw = spec.partition("=")
        try:
            kwargs = config_mod.load_yaml(raw, "kwargs") if given else {}
            model = replace(cfg.model, arch=arch.strip(), kwargs={})
            config_mod.fill(model, {"kwargs": kwargs}, "model.")
            models.append(replace(cfg, model=model))
            config_mod.validate(models[-1])
        except config_mod.ConfigError as e:
            raise config_mod.ConfigError(f"--model {spec!r}: {e}") from None
        if (model.arch, repr(model.kwargs)) in seen:
            raise config_mod.ConfigError(f"--model {spec!r}: given twice")
        seen.add((model.arch, repr(model.kwargs)))
    return models or None


def _cmd_bench_train(args) -> int:
    cfg = config_mod.load_config(args.config, args.set)
    backends = _backends(args.backends, need_baseline=False)
    models = _bench_models(cfg, args.model)
    for name, minimum in (("steps", 1), ("windows", 1), ("warmup", 0)):
        if getattr(args, name) < minimum:
            raise config_mod.ConfigError(f"--{name}={getattr(args, name)}: must be >= {minimum}")
    # bench imports everything and nothing imports bench, except this dispatch, on use.
    from fastssl.bench import train_throughput

    rows = train_throughput.measure(cfg, backends, args.steps, args.windows, args.warmup,
                                    progress=lambda line: print(line, file=sys.stderr), models=models)
    paths = train_throughput.write_all(rows, Path(args.out), by_model=models is not None)
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(paths[1].read_text())
    return 0


def _cmd_bench_loader(args) -> int:
    backends = _backends(args.backends)
    if not args.seconds > 0 or args.windows < 1:
        raise config_mod.ConfigError(f"--seconds={args.seconds} --windows={args.windows}: need seconds > 0 and "
                                     "windows >= 1")
    from fastssl.bench import loader_bench

    data = loader_bench.parse_data(args.data)
    overrides = [f"data.dataset={data['dataset']}"] + ([f"data.path={data['path']}"] if data["path"] else [])
    for key, value in (("data.image_size", args.res), ("loader.views", args.views),
                       ("loader.batch_size", args.batch), ("loader.workers", args.workers)):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = config_mod.load_config(args.config, overrides + args.set)
    rows = loader_bench.measure(cfg, backends, args.seconds, args.windows,
                                progress=lambda line: print(line, file=sys.stderr))
    paths = loader_bench.write_all(rows, Path(args.out), Path(args.json) if args.json else None)
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(paths[1].read_text())
    return 0


def _cmd_bench_startup(args) -> int:
    backends = _backends(args.backends, need_baseline=False)
    if args.classes < 1 or args.files < args.classes or args.repeats < 1:
        raise config_mod.ConfigError(f"--files={args.files} --classes={args.classes} --repeats={args.repeats}: need "
                                     "classes >= 1, files >= classes and repeats >= 1")
    config_mod.load_config(None, args.set)   # a bad --set fails now, not in the first start's process
    from fastssl.bench import startup_bench

    root = Path(args.root) if args.root else startup_bench.default_root(args.files, args.classes)
    result = startup_bench.run(root, args.files, args.classes, backends, args.repeats, args.set,
                               progress=lambda line: print(line, file=sys.stderr))
    paths = startup_bench.write_all(result, Path(args.out))
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(paths[1].read_text())
    return 0


def _cmd_bench_heads(args) -> int:
    if args.epochs < 1:
        raise config_mod.ConfigError(f"--epochs={args.epochs}: must be >= 1")
    from fastssl.bench import head_comparison as heads
    from fastssl.bench.harness import context
    from fastssl.engine.precision import resolve_device

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else heads.DEFAULT_VARIANTS
    configs = Path(args.configs)
    base = heads.small_cpu_run(args.data, args.epochs) + args.set
    for name in variants:   # every variant's config is checked before the first one trains
        try:
            files = heads.variant_files(name, configs)
        except ValueError as e:
            raise config_mod.ConfigError(f"--variants: {e}") from None
        config_mod.load_config([args.config] + files, base)
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    where = context(resolve_device(config_mod.load_config(args.config, base).train.device))  # the commit trained
    results = [heads.run_variant(name, base, args.config, configs, Path(args.work), say)
               for name in [heads.RANDOM_INIT] + variants]
    paths = heads.write_all(results, Path(args.out), shlex.join(["fastssl"] + sys.argv[1:]), where)
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(paths[1].read_text())
    return 0


def _cmd_bench_precision(args) -> int:
    from fastssl.bench import operand_precision

    if args.sizes not in operand_precision.SIZES:
        raise config_mod.ConfigError(f"--sizes {args.sizes!r}: must be one of {', '.join(operand_precision.SIZES)}")
    rows = operand_precision.measure(operand_precision.SIZES[args.sizes],
                                     progress=lambda line: print(line, file=sys.stderr))
    paths = operand_precision.write_all(rows, Path(args.out))
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(paths[1].read_text())
    return 0


def _cmd_bench_checkpoint(args) -> int:
    if args.reps < 1 or args.warmup < 0:
        raise config_mod.ConfigError(f"--reps={args.reps} --warmup={args.warmup}: need reps >= 1 and warmup >= 0")
    from fastssl.bench import checkpoint_check

    rows = checkpoint_check.measure(args.reps, args.warmup, progress=lambda line: print(line, file=sys.stderr))
    paths = checkpoint_check.write_all(rows, Path(args.out))
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(paths[1].read_text())
    return 0


def _cmd_bench_peers(args) -> int:
    from fastssl.bench import peers_bench
    from fastssl.bench.peers.recipe import Recipe

    listed = (lambda text: [x.strip() for x in text.split(",") if x.strip()])
    try:
        widths = [float(w) for w in listed(args.width)]
    except ValueError:
        raise config_mod.ConfigError(f"--width {args.width!r}: must be numbers, comma-separated") from None
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch", args.batch, 2), ("--res", args.res, 8),
                             ("--seeds", args.seeds, 1), ("--workers", args.workers, 0), ("--window", args.window, 1),
                             ("--skip", args.skip, 0), ("--limit-train", args.limit_train, 0), ("--profile-steps", args.profile_steps, 0),
                             ("--limit-test", args.limit_test, 0)):
        if value < low:
            raise config_mod.ConfigError(f"{flag}={value}: must be >= {low}")
    if not widths or any(not 0 < w <= 4 for w in widths):
        raise config_mod.ConfigError(f"--width {args.width!r}: each width must be in (0, 4]")
    data = Path(args.data)
    missing = [split for split in ("train", "test") if not (data / split).is_dir()]
    if missing:   # before any training: the evaluator needs test/ only after every run has trained
        raise config_mod.ConfigError(f"--data {args.data}: has no {' or '.join(missing)}/ folder; it must hold "
                                     "train/<class>/ and test/<class>/ (the kNN bank and the scored images)")
    say = (lambda line: print(line, file=sys.stderr, flush=True))
    work = Path(args.work)
    if args.limit_train or args.limit_test:
        data = peers_bench.subset(data, work / f"data_{args.limit_train}_{args.limit_test}",
                                  {"train": args.limit_train, "test": args.limit_test})
    base = Recipe(arch=args.arch, epochs=args.epochs, batch=args.batch, res=args.res, workers=args.workers)
    backends = listed(args.backends)
    specs, skipped = peers_bench.plan(listed(args.peers), listed(args.methods), backends, widths, args.seeds, base,
                                      str(data.resolve()), work, "")
    if args.profile_steps:
        specs = [replace(s, profile_after=args.skip, profile_steps=args.profile_steps) for s in specs]
    if any(s.backend == "ffcv" for s in specs):
        beton = peers_bench.prepare_beton(str(data.resolve()), work, say)
        specs = [replace(s, beton=beton) if s.backend == "ffcv" else s for s in specs]
    info = peers_bench.start_context()
    rows = peers_bench.measure(specs, args.skip, args.window, args.timeout, not args.no_probe, say) + skipped
    paths = peers_bench.write_all(rows, base, shlex.join(["fastssl", *args.argv]), Path(args.out), info)
    say(f"wrote {', '.join(map(str, paths))}")
    print(paths[1].read_text())
    return 0 if any(r.status == "ok" for r in rows) else 1


# --kernel name -> its module in fastssl.bench: PROVIDERS, MODES, DTYPES, parse_sizes, measure, write_all.
KERNEL_BENCHES = {"sim_xent": "sim_xent_bench", "proto_xent": "proto_xent_bench", "ridge": "ridge_bench",
                  "augment": "augment_bench"}


def _listed(flag: str, value: str, allowed) -> list[str]:
    """A comma-separated flag value, every item one of `allowed`."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items or any(v not in allowed for v in items):
        raise config_mod.ConfigError(f"--{flag} {value!r}: must be a comma-separated list of {', '.join(allowed)}")
    return items


def _cmd_bench_kernels(args) -> int:
    if args.kernel not in KERNEL_BENCHES:
        raise config_mod.ConfigError(f"--kernel {args.kernel!r}: must be one of {', '.join(KERNEL_BENCHES)}")
    for name, minimum in (("reps", 1), ("warmup", 0)):
        if getattr(args, name) is not None and getattr(args, name) < minimum:
            raise config_mod.ConfigError(f"--{name}={getattr(args, name)}: must be >= {minimum}")
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before fastssl.kernels is first imported: Triton on CPU
    bench = importlib.import_module(f"fastssl.bench.{KERNEL_BENCHES[args.kernel]}")
    from fastssl.kernels import runtime

    shapes = bench.parse_sizes(args.sizes or ("full" if cuda else "small"))
    dtypes = _listed("dtypes", args.dtypes or (",".join(bench.DTYPES) if cuda else "fp32"), bench.DTYPES)
    if not cuda and "bf16" in dtypes:
        raise config_mod.ConfigError(f"--dtypes {args.dtypes!r}: bf16 needs a CUDA GPU (Triton's interpreter "
                                     "computes bf16 as fp32)")
    modes = _listed("modes", args.modes or ",".join(bench.MODES), bench.MODES)
    asked = args.providers or ",".join(bench.PROVIDERS)
    providers = _listed("providers", asked, bench.PROVIDERS)
    if "triton" in providers and not cuda and not (runtime.HAVE_TRITON and runtime.INTERPRET):
        print("note: skipping the triton provider: without a GPU it needs triton and TRITON_INTERPRET=1 set "
              "before fastssl.kernels was first imported", file=sys.stderr)
        providers.remove("triton")
    if not providers:
        raise config_mod.ConfigError(f"--providers {asked!r}: nothing left to run on this machine")
    reps = args.reps or (30 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    rows = bench.measure(shapes, dtypes, modes, providers, reps=reps, warmup=warmup,
                         device=torch.device("cuda" if cuda else "cpu"),
                         progress=lambda line: print(line, file=sys.stderr))
    paths = bench.write_all(rows, Path(args.out), reps, warmup)
    print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
    print(paths[1].read_text())
    return 0


def _cmd_data_convert(args) -> int:
    from fastssl.loaders import convert

    try:
        import fastssl.loaders.ffcv_imports  # noqa: F401
    except ImportError as e:
        raise config_mod.ConfigError(f"fastssl data convert needs ffcv: pip install -e '.[ffcv]' ({e})") from e
    kind, path = convert.parse_source(args.src)
    dataset = convert.load_source(kind, path, args.split, args.on_error)
    quality = convert.DEFAULT_JPEG_QUALITY if args.jpeg_quality is None else args.jpeg_quality
    result = convert.convert(dataset, args.dst, raw=args.raw, jpeg_quality=quality, max_res=args.max_res,
                             workers=args.workers)
    print(f"wrote {result.images} images to {result.path}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable files (first: {result.skipped[0][0]})")
    return 0


def _cmd_data_check(args) -> int:
    from fastssl.loaders import check
    from fastssl.loaders.progress import ProgressBar

    checker = check.check_images if args.images else check.check_folder
    report = checker(args.path, progress=ProgressBar(f"checking {args.path}"))
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _cmd_data_index(args) -> int:
    from fastssl.loaders import check
    from fastssl.loaders.datasets.base import DataError
    from fastssl.loaders.datasets.index import Source, images_source, index_path, load_index
    from fastssl.loaders.progress import ProgressBar

    root = Path(args.path)
    if args.images:
        sources = [images_source(root)]
    elif not root.is_dir():
        raise DataError(f"ImageFolder root {str(root)!r}: is not an existing directory")
    else:
        sources = [Source(folder) for folder in check.split_folders(root) or [root]]
    for source in sources:
        start = time.monotonic()
        index = load_index(source.path, rebuild=args.rebuild, progress=ProgressBar(f"indexing {source.path}"),
                           kind=source.kind)
        bad = index.bad()
        held = f"in {len(index.classes):,} classes" if index.classes else "(unlabelled)"
        print(f"{source.path}: {len(index):,} files {held}, {index.header_reads:,} headers read in "
              f"{time.monotonic() - start:.1f} s, {len(bad):,} known bad -> {index_path(source.path, source.kind)}")
        for position, why in bad:
            print(f"bad image: {index.root / index.files[position]}: {why}")
    return 0


def _cmd_data_photos(args) -> int:
    from fastssl.loaders.datasets.photos import write_photo_folder

    try:
        made = write_photo_folder(args.dst, args.train, args.test, args.classes, args.seed)
    except ValueError as e:
        raise config_mod.ConfigError(f"fastssl data photos: {e}") from None
    print(f"wrote {made.files} JPEGs ({made.bytes / 2**20:,.1f} MiB, {made.source} sources) to {made.root}; "
          f"use --data imagefolder:{made.root} or data.path={made.root}")
    return 0


def _cmd_eval(args) -> int:
    from fastssl.evaluation import run_protocol  # after parsing: `fastssl --help` stays fast

    path, _, summary = run_protocol(args.ckpt, args.protocol, args.set, args.opt)
    print(f"{summary} -> {path}")
    return 0


def _cmd_features(args) -> int:
    from fastssl.evaluation.feature_files import write_features   # after parsing: `fastssl --help` stays fast
    from fastssl.evaluation.features import load_run

    out = Path(args.out) if args.out else None
    if out is not None and (out.suffix in (".npy", ".npz") or out.is_file()):
        raise config_mod.ConfigError(f"--out {args.out}: must be a folder; <split>_features.npy and "
                                     "<split>_labels.npy are written into it")
    run = load_run(Path(args.run) / args.ckpt, args.set + ([f"data.path={args.data}"] if args.data else []))
    out = write_features(run, out, tuple(args.split))
    print(f"features of {', '.join(args.split)} ({run.encoder.feature_dim} dims, step {run.step}) -> {out}")
    return 0


def _cmd_export(args) -> int:
    from fastssl.export import check_flags   # torch-free: a bad flag answers before torch loads

    check_flags(args.format, args.part, args.network)
    from fastssl.export.exporter import export

    _, lines = export(args.run, args.format, args.part, args.network, args.ckpt, args.out)
    print("\n".join(lines))
    return 0


def _cmd_profile(args) -> int:
    from fastssl.profile.run import check_arguments   # torch-free: bad arguments answer at once

    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    check_arguments(backends, args.steps, args.warmup)
    cfg = config_mod.load_config(args.config, args.set)
    out = Path(args.out)
    _writable_run_dir(out)
    import torch

    from fastssl.profile import profile, write_profile
    from fastssl.engine.precision import resolve_device

    device = resolve_device(cfg.train.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    device_mib = torch.cuda.get_device_properties(device).total_memory / 2**20 if device.type == "cuda" else None
    say = (lambda line: print(line, file=sys.stderr))
    profiles = profile(cfg, backends, args.steps, args.warmup, args.sync, out, args.trace, say)
    command = shlex.join(["fastssl", *args.argv])
    print(write_profile(profiles, out, command, name, args.sync, device_mib))
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
    train.add_argument("-c", "--config", action="append", help="YAML run config (see configs/); repeat to "
                       "layer a recipe on it, e.g. -c configs/cifar10_jpeg.yaml -c configs/augment/byol.yaml")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set optim.lr=0.5 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<date-time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    train.add_argument("--accept-data-change", action="store_true", help="resume although the training data "
                       "differ from the checkpoint's (the difference is printed; without this it is an error)")
    train.set_defaults(func=_cmd_train)
    _launch_parser(verbs)
    bench = verbs.add_parser("bench", help="benchmarks, each side by side with its baseline in one process",
                             description="Benchmarks: results as CSV, Markdown and PNG.")
    suites = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")
    train_bench = suites.add_parser("train", help="training images/s per data backend vs the torchvision "
                                    "baseline", description="End-to-end training throughput per backend.")
    train_bench.add_argument("-c", "--config", action="append", help="YAML run config, repeatable (default: the "
                             "quickstart)")
    train_bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train_bench.add_argument("--backends", default="torchvision,tensor", help="comma-separated; without "
                             "torchvision the table has no ratio column to it (default: %(default)s)")
    train_bench.add_argument("--model", action="append", default=[], metavar="ARCH[={KWARGS}]",
                             help="measure this model (model.arch, with model.kwargs as a YAML mapping, e.g. "
                             "'timm/vit_small_patch16_224={img_size: 32, patch_size: 4}'), repeatable: rows per "
                             "backend and model, in train_backbones_*, each compared with the first model's row")
    train_bench.add_argument("--steps", type=int, default=10, help="training steps per timing window")
    train_bench.add_argument("--windows", type=int, default=7, help="timing windows per backend (median, p20, p80)")
    train_bench.add_argument("--warmup", type=int, default=3, help="untimed steps per backend first")
    train_bench.add_argument("--out", default="bench/results", help="folder for the CSV/Markdown/PNG")
    train_bench.set_defaults(func=_cmd_bench_train)
    loader_bench = suites.add_parser("loader", help="data backends' images/s and CPU use vs the torchvision "
                                     "DataLoader", description="Input-pipeline throughput per backend: "
                                     "steady-state images/s, CPU cores busy, start-up apart.")
    loader_bench.add_argument("-c", "--config", action="append", help="YAML run config(s) for the recipe, "
                              "repeatable (default: the quickstart)")
    loader_bench.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    loader_bench.add_argument("--backends", default="tensor,torchvision", help="comma-separated, with "
                              "torchvision (default: %(default)s)")
    loader_bench.add_argument("--data", default="shapes", help="shapes, random, or imagefolder:PATH, cifar10:PATH, "
                              "fashion_mnist:PATH (default: %(default)s)")
    loader_bench.add_argument("--res", type=int, help="output side in pixels (data.image_size)")
    loader_bench.add_argument("--views", type=int, help="views per image (loader.views)")
    loader_bench.add_argument("--batch", type=int, help="images per batch (loader.batch_size)")
    loader_bench.add_argument("--workers", type=int, help="worker processes (loader.workers)")
    loader_bench.add_argument("--seconds", type=float, default=30.0, help="timed seconds per backend, split "
                              "into the windows (default: %(default)s)")
    loader_bench.add_argument("--windows", type=int, default=5, help="alternating windows (median, p20, p80)")
    loader_bench.add_argument("--json", help="also write the rows as JSON to this file")
    loader_bench.add_argument("--out", default="bench/results", help="folder for the CSV/Markdown/PNG")
    loader_bench.set_defaults(func=_cmd_bench_loader)
    startup = suites.add_parser("startup", help="first and second start (no index, then the index) per backend "
                                "over a generated ImageNet-layout tree", description="Start-up to the first batch "
                                "per backend, each start a fresh process, over N small JPEGs in WordNet-id class "
                                "folders (written once, reused); the index's pieces extrapolated to 1.28 M files.")
    startup.add_argument("--files", type=int, default=100_000, help="train JPEGs (default: %(default)s)")
    startup.add_argument("--classes", type=int, default=1000, help="class folders (default: %(default)s)")
    startup.add_argument("--root", help="the tree's folder (default: <tmp>/fastssl-startup-bench/imagenet_FxC)")
    startup.add_argument("--backends", default="tensor,torchvision,dali,ffcv", help="comma-separated; one whose "
                         "package is missing is skipped and named (default: %(default)s)")
    startup.add_argument("--repeats", type=int, default=3, help="first/second pairs per backend (median, min-max)")
    startup.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config for every start")
    startup.add_argument("--out", default="bench/results", help="folder for the CSV/Markdown/PNG")
    startup.set_defaults(func=_cmd_bench_startup)
    heads = suites.add_parser("heads", help="every head (and the meta-learning tricks) trained on one budget, "
                              "kNN and linear accuracy vs the random-init encoder",
                              description="Heads compared on equal footing: one training run per variant, "
                              "then kNN and a linear probe on frozen features.")
    heads.add_argument("--data", required=True, help="ImageFolder root with train/ and test/ (e.g. CIFAR-10 JPEG)")
    heads.add_argument("-c", "--config", default="configs/cifar10_jpeg.yaml", help="base run config "
                       "(default: %(default)s), shrunk to the CPU budget")
    heads.add_argument("--configs", default="configs", help="folder of the heads/ and tricks/ fragments each "
                       "variant layers on the base config (default: %(default)s)")
    heads.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applied to every variant")
    heads.add_argument("--epochs", type=int, default=4, help="epochs per variant (default: %(default)s)")
    heads.add_argument("--variants", help="comma-separated, e.g. 'contrastive,r2d2 + task aug' (default: every "
                       "head plain, + task aug, + task aug + rot pred; byol also + cutmix)")
    heads.add_argument("--work", default="runs/heads", help="run folders; finished variants there are reused")
    heads.add_argument("--out", default="bench/results/heads_cifar10_cpu", help="path stem of the CSV/Markdown/PNG")
    heads.set_defaults(func=_cmd_bench_heads)
    precision = suites.add_parser("precision", help="the contrastive loss with bf16 vs fp32 operands, error "
                                  "against float64", description="Error of the NT-Xent loss and its gradient "
                                  "when the fused kernel reads bf16 instead of fp32 embeddings (fp32 "
                                  "accumulation both), against float64, over sizes and temperatures.")
    precision.add_argument("--sizes", default="full", help="small or full (default: %(default)s)")
    precision.add_argument("--out", default="bench/results", help="folder for the CSV/Markdown/PNG")
    precision.set_defaults(func=_cmd_bench_precision)
    ckpt = suites.add_parser("checkpoint", help="what proving a checkpoint's bytes costs at ResNet-50 size, vs "
                             "plain torch.save/load", description="Save and load a ResNet-50 checkpoint (model + "
                             "LARS momentum) with fastssl's integrity check (a CRC-32 per tensor, the zip's CRC-32s) "
                             "and with plain torch.save / torch.load(weights_only=True), alternating in one process.")
    ckpt.add_argument("--reps", type=int, default=7, help="timed repetitions (median, p20, p80)")
    ckpt.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    ckpt.add_argument("--out", default="bench/results", help="folder for the CSV/Markdown/PNG")
    ckpt.set_defaults(func=_cmd_bench_checkpoint)
    peers = suites.add_parser("peers", help="fastssl vs lightly, LightlyTrain and solo-learn on one recipe: "
                              "images/s and the common evaluator's kNN/linear", description="Train the same "
                              "network with the same data, batch, views, augmentation, optimizer, schedule and "
                              "epochs with each trainer (each run its own process), time every optimizer step "
                              "the same way and score every backbone with one evaluator. Peers: pip install "
                              "'fastssl[peers]'.")
    peers.add_argument("--data", required=True, help="ImageFolder root with train/<class>/ and test/<class>/")
    peers.add_argument("--peers", default="fastssl,lightly,lightly-train,solo-learn", help="comma-separated "
                       "(default: %(default)s)")
    peers.add_argument("--backends", default="tensor,torchvision,ffcv,dali", help="fastssl's data backends, "
                       "comma-separated; those without their extra are reported as not run (default: %(default)s)")
    peers.add_argument("--methods", default="simclr,byol", help="comma-separated (default: %(default)s)")
    peers.add_argument("--epochs", type=int, default=1, help="epochs per run (default: %(default)s)")
    peers.add_argument("--arch", default="resnet18", choices=("resnet18", "resnet34", "resnet50"),
                       help="torchvision ResNet every trainer trains (default: %(default)s)")
    peers.add_argument("--width", default="1.0", help="width multiplier(s), comma-separated (default: %(default)s)")
    peers.add_argument("--batch", type=int, default=256, help="(default: %(default)s)")
    peers.add_argument("--res", type=int, default=32, help="image side; < 64 uses the CIFAR stem (default: %(default)s)")
    peers.add_argument("--seeds", type=int, default=1, help="seeds per run, 0..N-1 (default: %(default)s)")
    peers.add_argument("--workers", type=int, default=2, help="loading workers, every trainer (default: %(default)s)")
    peers.add_argument("--limit-train", type=int, default=0, help="use the first N images of each train class "
                       "(0: all)")
    peers.add_argument("--limit-test", type=int, default=0, help="use the first N images of each test class (0: all)")
    peers.add_argument("--skip", type=int, default=3, help="first steps left out of the rates (start-up) "
                       "(default: %(default)s)")
    peers.add_argument("--window", type=int, default=4, help="steps per timing window (default: %(default)s)")
    peers.add_argument("--timeout", type=float, default=7200, help="seconds one run may take (default: %(default)s)")
    peers.add_argument("--no-probe", action="store_true", help="kNN only, no linear probe")
    peers.add_argument("--profile-steps", type=int, default=0, help="torch.profiler over this many steps after "
                       "--skip, every trainer alike: RUN/profile.txt (profiled rates are the profiler's: use "
                       "another --work and --out)")
    peers.add_argument("--work", default="runs/bench-peers", help="run folders; finished runs there are reused")
    peers.add_argument("--out", default="bench/results/peers_cpu", help="path stem of the CSV/Markdown/PNG")
    peers.set_defaults(func=_cmd_bench_peers)
    kernels = suites.add_parser("kernels", help="one Triton kernel vs its torch baselines: time, memory, error",
                                description="Kernel microbenchmark: the Triton kernel and its torch baselines, "
                                "in one process, on the same inputs.")
    kernels.add_argument("--kernel", required=True, help=f"one of {', '.join(KERNEL_BENCHES)}")
    kernels.add_argument("--sizes", help="small, full, or comma-separated shapes: 2NxD for sim_xent, VsxVtxBxKxD "
                         "for proto_xent, TxnxD for ridge, BxS for augment (default: full on CUDA, small otherwise)")
    kernels.add_argument("--dtypes", help="comma-separated fp32,bf16 (default: both on CUDA, fp32 otherwise)")
    kernels.add_argument("--modes", help="comma-separated, of forward,backward,forward+backward (default: all)")
    kernels.add_argument("--providers", help="comma-separated (default: all of the kernel's: sim_xent and "
                         "proto_xent triton,eager,compile; ridge triton,solve,cholesky; augment triton,eager,copy)")
    kernels.add_argument("--reps", type=int, help="timed repetitions for median, p20, p80 (default: 30 on CUDA, "
                         "10 otherwise)")
    kernels.add_argument("--warmup", type=int, help="untimed repetitions per mode first (default: 3 on CUDA, "
                         "1 otherwise)")
    kernels.add_argument("--out", default="bench/results", help="folder for the CSV/Markdown/PNG")
    kernels.set_defaults(func=_cmd_bench_kernels)
    data = verbs.add_parser("data", help="dataset tools", description="Dataset tools.")
    data_verbs = data.add_subparsers(dest="tool", required=True, metavar="TOOL")
    conv = data_verbs.add_parser("convert", help="write a dataset as an FFCV .beton for loader.backend=ffcv",
                                 description="Write a dataset as an FFCV .beton (loader.backend=ffcv, "
                                 "loader.beton=DST), bad files settled by --on-error.")
    conv.add_argument("--src", required=True, help="imagefolder:PATH (PATH holds the class folders), "
                      "images:PATH (unlabelled: a folder read at any depth or a .txt list of image paths), "
                      "cifar10:PATH, cifar100:PATH or fashion-mnist:PATH")
    conv.add_argument("--dst", required=True, help="the .beton file to write")
    conv.add_argument("--split", default="train", help="train or test, for cifar and fashion-mnist "
                      "(default: %(default)s)")
    conv.add_argument("--max-res", type=int, help="shrink images whose longer side exceeds this")
    mode = conv.add_mutually_exclusive_group()
    mode.add_argument("--jpeg-quality", type=int, help="store JPEG of this quality (default: 90)")
    mode.add_argument("--raw", action="store_true", help="store uint8 RGB pixels: decoding is a copy "
                      "(best for CIFAR-scale images)")
    conv.add_argument("--on-error", default="raise", choices=config_mod.ON_ERROR, help="a file that "
                      "cannot be decoded stops the conversion, or is skipped and counted (default: %(default)s)")
    conv.add_argument("--workers", type=int, help="writer processes (default: all cores)")
    conv.set_defaults(func=_cmd_data_convert)
    chk = data_verbs.add_parser("check", help="decode every file of an ImageFolder, list the bad ones",
                                description="Validate an ImageFolder (PATH/<class>/<images>): every image "
                                "file must decode to RGB. Lists bad files with the reason (symbolic links that "
                                "lead nowhere included), empty class folders, class folders that lead nowhere and "
                                "non-image files; exits 1 when a bad file or a bad or empty class folder exists.")
    chk.add_argument("path", help="the folder that holds the class folders")
    chk.add_argument("--images", action="store_true", help=IMAGES_HELP)
    chk.set_defaults(func=_cmd_data_check)
    idx = data_verbs.add_parser("index", help="build or refresh the dataset index that start-up reads",
                                description="Build or bring up to date the index of an ImageFolder (or of each "
                                "split of PATH/train, PATH/test): file list, labels and image sizes from the "
                                "headers, read over all cores. Runs do this themselves at start; later starts "
                                "re-read only new or changed files. The index lives under $FASTSSL_INDEX_DIR "
                                "(default ~/.cache/fastssl/index).")
    idx.add_argument("path", help="a folder of class folders, or one of split folders")
    idx.add_argument("--images", action="store_true", help=IMAGES_HELP)
    idx.add_argument("--rebuild", action="store_true", help="forget the stored index and read every header")
    idx.set_defaults(func=_cmd_data_index)
    photos = data_verbs.add_parser("photos", help="write a data-free JPEG ImageFolder at photo sizes (decoder "
                                   "benchmarks)", description="Write DST/train/<class>/*.jpg (and DST/test) of "
                                   "full-size photographs: scikit-image's sample photos where it is installed, "
                                   "drawn scenes otherwise, each file its own crop, flip and JPEG quality.")
    photos.add_argument("dst", help="a new or empty folder")
    photos.add_argument("--train", type=int, default=2000, help="train images (default: %(default)s)")
    photos.add_argument("--test", type=int, default=200, help="test images (default: %(default)s)")
    photos.add_argument("--classes", type=int, default=10, help="class folders (default: %(default)s)")
    photos.add_argument("--seed", type=int, default=0)
    photos.set_defaults(func=_cmd_data_photos)
    ev = verbs.add_parser("eval", help=f"evaluate a trained encoder's features: {', '.join(config_mod.PROTOCOLS)}",
                          description="Evaluate the encoder of a run's checkpoint (features h, not the "
                          "projection); writes RUN/eval_<protocol>.json and prints a one-line summary.")
    ev.add_argument("--ckpt", required=True, help="the run's checkpoint, e.g. runs/x/last.pt (the run's "
                    "config.yaml is read from its folder)")
    ev.add_argument("--protocol", required=True, choices=config_mod.PROTOCOLS,
                    help="knn: weighted kNN; linear: logistic regression on frozen features; semi: fine-tune "
                    "on 1%%/10%% labels; fewshot: N-way K-shot episodes (prototype and ridge); oneshot: Omniglot's "
                    "20 one-shot runs, --opt runs=all_runs.zip (error rate, with a raw-pixel baseline)")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the run's config, e.g. --set data.path=... --set train.device=cpu (repeatable)")
    ev.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                    help="protocol setting, e.g. --opt episodes=1000 --opt shots=[1,5] (fewshot), --opt "
                    "epochs=20 (semi), --opt weight_decays=[1e-4,1e-3] (linear), --opt k=20 (knn)")
    ev.set_defaults(func=_cmd_eval)
    exp = verbs.add_parser("export", help="write a run's encoder as torchvision, safetensors, TorchScript or "
                           "ONNX", description="Write the encoder (or encoder + projector) of a run's "
                           "checkpoint to a file that loads without fastssl's trainer, with the run's metadata; "
                           "the file is reloaded and checked against the network before it is put in place.")
    exp.add_argument("run", metavar="RUN", help="the run directory (holds config.yaml and the checkpoint)")
    exp.add_argument("--format", default=None, help=f"one of {', '.join(export_formats.names())}; torchvision, timm: a "
                     "state dict for the library's own model (default: the backbone's library; safetensors for a "
                     "user's module)")
    exp.add_argument("--part", default="encoder", help="encoder (features h) or encoder+projector (also z) "
                     "(default: %(default)s)")
    exp.add_argument("--network", default="online", help="online, or target: the momentum network of a method "
                     "that keeps one (BYOL's target, MoCo's key encoder) (default: %(default)s)")
    exp.add_argument("--ckpt", default="last.pt", help="the checkpoint in RUN (default: %(default)s)")
    exp.add_argument("--out", help="the file to write (default: RUN/<network>_<part>.<format's suffix>)")
    exp.set_defaults(func=_cmd_export)
    feats = verbs.add_parser("features", help="write the frozen encoder's features and labels as .npy files",
                             description="The encoder output h (not the projection, not normalised) of every "
                             "image of the run's data, or of --data, in the dataset's order: OUT/<split>_features.npy "
                             "(N x D float32), OUT/<split>_labels.npy (N int64) and OUT/features.json.")
    feats.add_argument("run", help="the run directory (holds config.yaml and the checkpoint)")
    feats.add_argument("--ckpt", default="last.pt", help="checkpoint file inside RUN (default: last.pt)")
    feats.add_argument("--data", help="another dataset root of the run's kind (data.path); e.g. an ImageFolder")
    feats.add_argument("--split", nargs="+", choices=("train", "test"), default=["train", "test"],
                       help="splits to write (default: both)")
    feats.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override the run's config, e.g. --set data.dataset=imagefolder --set train.device=cpu")
    feats.add_argument("--out", help="output folder (default: RUN/features, or RUN/features_<data tag> on other data)")
    feats.set_defaults(func=_cmd_features)
    prof = verbs.add_parser("profile", help="where each millisecond of a training step goes, per backend, and "
                            "what to change", description="Runs the real training step (W warm-up + N timed steps "
                            "per backend) and splits it into stages: loader wait, host-to-device copy, augmentation, "
                            "task, forward, gather, head, backward, optimizer. Writes profile.json, profile.md, "
                            "profile.png (and trace_<backend>.json with --trace) under --out.")
    prof.add_argument("-c", "--config", action="append", help="YAML run config, repeatable (default: the quickstart)")
    prof.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    prof.add_argument("--steps", type=int, default=30, help="timed steps per backend (default: %(default)s)")
    prof.add_argument("--warmup", type=int, default=5, help="untimed steps first (default: %(default)s)")
    prof.add_argument("--backends", default="tensor", help="comma-separated (default: %(default)s)")
    prof.add_argument("--sync", action="store_true", help="synchronise the device at every stage boundary: exact "
                      "attribution of asynchronous work, at the price of a perturbed step")
    prof.add_argument("--trace", action="store_true", help="also write a torch.profiler trace (Chrome/Perfetto "
                      "JSON) of a few steps per backend, stages as named ranges (NVTX on CUDA)")
    prof.add_argument("--out", default="profile", help="output folder (default: %(default)s)")
    prof.set_defaults(func=_cmd_profile)
    env = verbs.add_parser("env", help="versions of torch, triton, CUDA, cuDNN, GPU, DALI, FFCV (for bug "
                           "reports)", description="Print the software and hardware environment.")
    env.add_argument("--json", action="store_true", help="print as JSON")
    env.set_defaults(func=_cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)     # the command line, for result files
    try:
        return args.func(args)
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"fastssl {args.verb}: error: {e}", file=sys.stderr)
        return 2
