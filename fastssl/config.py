"""Typed run configuration: dataclasses are the schema, YAML files and `--set` overrides fill it.

Every rule is checked before any work starts, and a failure names the key, the value and the rule,
so a typo in a 3-hour run's config costs a second, not the run.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from fastssl.models.resnet import ARCH_SPECS
from fastssl.optim import OPTIMIZERS

BACKENDS = ("tensor", "torchvision", "ffcv", "dali")
ARCHS = tuple(ARCH_SPECS)
HEADS = ("contrastive", "protonet", "r2d2", "byol", "svm")
QUERY_MIXES = ("none", "mixup", "cutmix")
# Equal to kernels.runtime.IMPLS (a test checks). Not imported from there: importing the kernels fixes
# TRITON_INTERPRET, and the CLI must be able to set it after reading the config.
LOSS_IMPLS = ("auto", "triton", "reference")
DATASETS = ("shapes", "cifar10", "cifar100", "imagefolder", "fashion_mnist", "omniglot", "random")
GENERATED = ("shapes", "random")   # made by the project: no path, sized by num_train / num_test
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSS_DTYPES = ("auto", "fp32", "bf16")
ON_NONFINITE = ("stop", "skip_step")
VIEW_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}   # loader.dtype -> its precision
DEVICES = ("auto", "cpu", "cuda")
ON_ERROR = ("raise", "skip")
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"  # where `apt-get install dataset-fashion-mnist` puts it
# Upper bounds: far beyond any real run, low enough that a typo fails here, not after minutes of data
# building, in a 56 GiB allocation or in an integer overflow inside torch.
MAX_IMAGE_SIZE = 4096               # one image is S^2 x 3 bytes: 48 MiB at 4096 px
MAX_GENERATED_BYTES = 16 * 2**30    # shapes and random hold all their N images x S^2 x 3 bytes in memory
MAX_IMAGES = 10_000_000             # data.num_train, num_test, num_classes
MAX_BATCH = 65536
MAX_VIEWS = 32
MAX_WORKERS = 256
MAX_PREFETCH = 64
MAX_JITTER = 10                     # colour factors are drawn from [max(0, 1 - s), 1 + s]
MAX_WIDTH = 8                       # 8x the standard ResNet widths
MAX_DIM = 65536                     # projector and predictor widths
MAX_PROJECTOR_LAYERS = 16
MAX_SVM_ITERS = 1000                # unrolled: memory grows with every step
MAX_EPOCHS = 10_000
MAX_STEPS = 10**9
MAX_SEED = 2**32 - 1                # numpy and torch generators both take it
MAX_KNN_K = 100_000


class ConfigError(ValueError):
    """A config value breaks a rule; the message names the key, the value and the rule."""


MAX_SHOWN = 200          # characters of a value an error message echoes
MAX_EXPANDED = 1_000_000  # nodes + scalar characters of a YAML document with its aliases expanded


def cut(text: str) -> str:
    """`text` cut to MAX_SHOWN characters, saying how long it was: one hostile value must not make a
    megabyte error message."""
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}... ({len(text):,} characters)"


def shown(value: Any) -> str:
    """repr(value) for an error message, cut to MAX_SHOWN characters."""
    return cut(repr(value))


class _Yaml12:
    """YAML 1.2 core-schema tags for plain scalars. PyYAML implements 1.1, where `yes` and `on` are
    true, `1e3` and `0o10` are strings, `010` is octal and `2001-12-14` a date."""
    INT = r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+"
    FLOAT = (r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?"
             r"|[-+]?(\.inf|\.Inf|\.INF)|\.nan|\.NaN|\.NAN")
    RESOLVERS = [("null", r"null|Null|NULL|~|"), ("bool", r"true|True|TRUE|false|False|FALSE"),
                 ("int", INT), ("float", FLOAT)]   # in this order: `1` is an int, not a float

    @staticmethod
    def to_int(text: str) -> int:
        base = {"0o": 8, "0x": 16}.get(text[:2], 10)
        return int(text[2:] if base != 10 else text, base)

    @staticmethod
    def to_float(text: str) -> float:
        special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
        return special[text.lower()] if text.lower() in special else float(text)

    @staticmethod
    def to_bool(text: str) -> bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{shown(text)} is not true or false")
        return text.lower() == "true"


class _Loader(yaml.SafeLoader):
    """SafeLoader (no object tags) reading YAML 1.2 core-schema scalars, refusing duplicate keys, and
    refusing documents whose aliases expand beyond MAX_EXPANDED (a "billion laughs" file is small
    on disk and huge once echoed)."""
    yaml_implicit_resolvers: dict = {}

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        mapping = super().construct_mapping(node, deep)
        if len(mapping) < len(node.value):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}",
                                                            key_node.start_mark)
                seen.add(key)
        return mapping


class _Dumper(yaml.SafeDumper):
    """Writes bare only the strings that _Loader reads back as strings (`1e3` gets quotes)."""
    yaml_implicit_resolvers: dict = {}


for _tag, _regex in _Yaml12.RESOLVERS:
    for _cls in (_Loader, _Dumper):
        _cls.add_implicit_resolver(f"tag:yaml.org,2002:{_tag}", re.compile(f"^(?:{_regex})$"), None)
for _tag, _parse in (("int", _Yaml12.to_int), ("float", _Yaml12.to_float), ("bool", _Yaml12.to_bool)):
    _Loader.add_constructor(f"tag:yaml.org,2002:{_tag}",
                            lambda loader, node, parse=_parse: parse(loader.construct_scalar(node)))


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes plus scalar characters under `node`, each alias counted in full; ConfigError beyond
    MAX_EXPANDED or on an alias inside the collection it names."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise ConfigError("an alias refers to itself (a collection that contains itself)")
    open_.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    else:
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        size = 1 + sum(_expanded_size(child, sizes, open_) for child in children)
    open_.discard(id(node))
    if size > MAX_EXPANDED:
        raise ConfigError(f"with its aliases expanded it holds more than {MAX_EXPANDED:,} nodes and characters "
                          "(an alias bomb?)")
    sizes[id(node)] = size
    return size


def load_yaml(text: str | bytes, source: str) -> Any:
    """Parse one YAML 1.2 document; any failure is a one-line ConfigError naming `source`."""
    try:
        return yaml.load(text, _Loader)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None
    except (yaml.YAMLError, ValueError) as e:
        if isinstance(e, yaml.MarkedYAMLError):
            mark = e.problem_mark or e.context_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = f"{e.context + ': ' if e.context else ''}{e.problem or ''}{where}"
        else:
            problem = str(e)
        raise ConfigError(f"{source}: not valid YAML ({cut(' '.join(problem.split()))})") from None


@dataclass
class DataConfig:
    """Which images to learn from. `shapes` is the embedded default, generated by the project."""
    dataset: str = "shapes"
    path: str | None = None          # root of cifar10/cifar100 (pickle batches), imagefolder or fashion_mnist
    download: bool = False           # cifar only: fetch the archive when `path` lacks it
    image_size: int = 32             # side of the square images the encoder sees
    train_split: str = "train"       # imagefolder: sub-folders of `path`
    test_split: str = "test"
    num_train: int = 6000            # shapes and random: generated images per split
    num_test: int = 2000
    num_classes: int = 10            # random only (shapes has its 10 shapes)
    seed: int = 0                    # shapes and random: generator seed
    on_error: str = "raise"          # corrupt files: raise, or skip and count


@dataclass
class LoaderConfig:
    backend: str = "tensor"
    batch_size: int = 128            # global batch (all ranks); 128: twice the steps of 256 per CPU minute
    views: int = 2
    workers: int = 2                 # torchvision: worker processes; ffcv, dali: decode threads
    pin_memory: bool = True          # torchvision backend, CUDA only
    beton: str | None = None         # ffcv backend: the file `fastssl data convert` wrote from the data
    hw_decoder_load: float = 0.65    # dali on a GPU: share of JPEG decoding given to the hardware decoder
    prefetch: int = 2                # dali: batches its pipeline prepares ahead
    dtype: str = "auto"              # the views' dtype; auto: the training precision's (bf16 views under bf16)


@dataclass
class AugmentConfig:
    """SimCLR's augmentation recipe; strengths as in its paper (colour strength s = 0.5, CIFAR's).

    crop_scale_min is 0.5 for the embedded shapes, whose class lives in one object that smaller crops
    cut off; natural-image configs set SimCLR's 0.2 (CIFAR) or 0.08 (ImageNet).
    """
    crop_scale_min: float = 0.5
    crop_scale_max: float = 1.0
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grayscale_p: float = 0.2
    # Per view (view v uses entry v mod the length): BYOL's asymmetric recipe blurs view 1 always and
    # view 2 rarely, and solarizes view 2 only (configs/augment/byol.yaml).
    blur_p: list[float] = field(default_factory=lambda: [0.0])
    solarize_p: list[float] = field(default_factory=lambda: [0.0])
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    blur_kernel_frac: float = 0.1    # Gaussian window side as a fraction of the output side (odd, >= 3)
    solarize_threshold: float = 0.5  # on [0, 1] intensities: x >= threshold becomes 1 - x
    impl: str = "auto"               # colour kernel: auto (Triton on CUDA, torch on CPU), triton or reference

    def for_view(self, name: str, view: int) -> float:
        """The value of per-view field `name` for view `view`."""
        values = getattr(self, name)
        return values[view % len(values)]


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    cifar_stem: bool = True          # 3x3 conv stem without max-pool, for small images
    width: float = 0.125             # channel multiplier on the standard widths (64, 128, 256, 512)
    projector_hidden: int = 256
    projector_out: int = 64
    projector_layers: int = 2
    projector_bn: bool = True
    channels_last: bool = True


@dataclass
class MethodConfig:
    head: str = "contrastive"
    temperature: float = 0.2
    n_supp: int = 1          # support views per image (protonet's prototype, r2d2's / svm's training rows)
    n_query: int = 1         # query views per image; loader.views must equal n_supp + n_query
    ridge_lambda: float = 1.0  # r2d2: starting value of the learnable ridge penalty (> 0)
    svm_c: float = 0.1         # svm: the SVM's C (MetaOptNet's C_reg), > 0
    svm_iters: int = 30        # svm: accelerated projected-gradient steps on the dual QP (unrolled)
    svm_tasks: int = 1         # svm: independent tasks the batch's images are split into (must divide it)
    task_rotation_p: float = 0.0  # task augmentation: chance an image is rotated by 90/180/270 degrees
                                  # in all its views, becoming a new class (0: off)
    rotation_weight: float = 0.0  # rotation prediction: weight of the 4-way rotation loss on the projection
                                  # (0: off; needs task_rotation_p > 0, whose rotations it predicts)
    query_mix: str = "none"       # none | mixup | cutmix between the query views of different images
    query_mix_p: float = 1.0      # chance a batch's queries are mixed
    query_mix_alpha: float = 1.0  # lam ~ Beta(alpha, alpha)
    loss_impl: str = "auto"  # auto: fused Triton kernel on CUDA, torch reference on CPU; or force one
    loss_dtype: str = "auto"  # contrastive/protonet: dtype of the unit embeddings the similarity loss reads
                              # (fp32 sums either way); auto: bf16 under bf16 training, else fp32
    byol_momentum: float = 0.996  # byol: target EMA momentum at step 0; rises to 1 by a cosine over the run
    predictor_hidden: int = 256   # byol: hidden width of the predictor MLP (projector_out -> this -> projector_out)


@dataclass
class OptimConfig:
    name: str = "lars"
    lr: float = 1.0
    weight_decay: float = 1e-6
    momentum: float = 0.9
    trust_coefficient: float = 0.001  # LARS only
    warmup_epochs: float = 1.0


@dataclass
class TrainConfig:
    epochs: int = 12
    max_steps: int = 0               # > 0: stop after this many steps (tests, smoke runs)
    seed: int = 0
    precision: str = "auto"
    device: str = "auto"
    compile: bool = False
    deterministic: bool = False
    log_every: int = 10
    ckpt_every: int = 0              # steps between checkpoints; 0: only at the end
    cudnn_benchmark: bool = True
    on_nonfinite: str = "stop"       # a NaN/inf loss: stop (nothing non-finite is saved), or skip_step
    max_skipped_steps: int = 10      # skip_step: stop once this many steps were skipped


@dataclass
class KnnConfig:
    k: int = 200
    temperature: float = 0.1
    every_epochs: int = 4            # 0: only at the start and the end


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a YAML/--set value to the schema type, or fail naming the key."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if origin is list:
        item = typing.get_args(typ)[0]
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ConfigError(f"{key}=[]: must hold at least one value")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(items)]
    # Exact types: YAML 1.2 has already told numbers, booleans and strings apart, so nothing is parsed here.
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={shown(value)}: must be true or false")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={shown(value)}: must be an integer")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={shown(value)}: must be a number")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{key}={shown(value)}: must be a number in the float range") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={shown(value)}: must be a string")
        return value
    raise ConfigError(f"{key}: unsupported schema type {typ}")


def _apply(obj: Any, values: dict, prefix: str = "") -> None:
    types_ = _field_types(type(obj))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if name not in types_:
            raise ConfigError(f"unknown key {shown(key)} (known in {prefix.rstrip('.') or 'the config'}: "
                              f"{', '.join(types_)})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}={shown(value)}: must be a mapping of "
                                  f"{', '.join(_field_types(type(current)))}")
            _apply(current, value, key + ".")
        else:
            setattr(obj, name, _coerce(key, value, types_[name]))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML 1.2, as in a config file)."""
    if "=" not in text:
        raise ConfigError(f"--set {shown(text)}: must look like key.sub=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {shown(text)}: empty key component")
    return parts, load_yaml(raw, f"--set {shown(text)}") if raw.strip() else ""


def load_config(path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                overrides: Sequence[str] = ()) -> Config:
    """Defaults, then the YAML file(s) in order (a run config, then recipe fragments such as
    configs/augment/byol.yaml), then `--set` overrides; validated before returning."""
    cfg = Config()
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for path in paths:
        p = Path(path)
        source = f"config file {shown(str(p))}"
        if not p.is_file():
            raise ConfigError(f"{source}: does not exist")
        try:
            data = p.read_bytes()   # bytes: the YAML reader decodes UTF-8/16/32 and names a bad byte
        except OSError as e:
            raise ConfigError(f"{source}: cannot be read ({e.strerror})") from None
        values = load_yaml(data, source)
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: must hold a mapping at the top level")
        _apply(cfg, values)
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        _apply(cfg, nested)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={shown(value)}: {rule}")


def _int_in(key: str, value: int, low: int, high: int, why: str = "") -> None:
    _require(value >= low, key, value, f"must be >= {low}")
    _require(value <= high, key, value, f"must be <= {high}{why}")


def _finite_in(key: str, value: float, low: float, high: float) -> None:
    _require(math.isfinite(value) and low <= value <= high, key, value, f"must be a finite number in [{low}, {high}]")


def _one_of(key: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, key, value, f"must be one of {', '.join(choices)}")


def _finite_positive(key: str, value: float) -> None:
    _require(math.isfinite(value) and value > 0, key, value, "must be a finite number > 0")


def _probability(key: str, value: float) -> None:
    _require(0.0 <= value <= 1.0, key, value, "must be a probability in [0, 1]")


def validate(cfg: Config, world: int | None = None) -> None:
    """Check every rule; raise ConfigError naming the first broken one."""
    world = world_size() if world is None else world
    d, ld, m = cfg.data, cfg.loader, cfg.model
    _one_of("data.dataset", d.dataset, DATASETS)
    _one_of("data.on_error", d.on_error, ON_ERROR)
    _int_in("data.image_size", d.image_size, 8, MAX_IMAGE_SIZE, " (the data take N images x S^2 x 3 bytes of "
            f"memory: {MAX_IMAGE_SIZE ** 2 * 3 / 2**20:.0f} MiB per image at {MAX_IMAGE_SIZE} px)")
    _int_in("data.seed", d.seed, 0, MAX_SEED)
    for name in ("num_train", "num_test"):
        _require(getattr(d, name) <= MAX_IMAGES, f"data.{name}", getattr(d, name), f"must be <= {MAX_IMAGES}")
    if d.dataset in GENERATED:
        _require(d.num_train >= 2, "data.num_train", d.num_train, "must be >= 2")
        _require(d.num_test >= 1, "data.num_test", d.num_test, "must be >= 1")
        if d.dataset == "random":
            _require(1 <= d.num_classes <= d.num_train, "data.num_classes", d.num_classes,
                     f"must be in [1, data.num_train = {d.num_train}]")
        n = d.num_train + d.num_test
        _require(n * d.image_size ** 2 * 3 <= MAX_GENERATED_BYTES, "data.image_size", d.image_size,
                 f"the {n:,} generated images (data.num_train + data.num_test) take N images x S^2 x 3 bytes = "
                 f"{n * d.image_size ** 2 * 3 / 2**30:.1f} GiB of memory: "
                 f"must be <= {MAX_GENERATED_BYTES // 2**30} GiB")
    else:
        path = d.path if d.path is not None else (FASHION_MNIST_DEFAULT if d.dataset == "fashion_mnist" else None)
        _require(path is not None, "data.path", d.path, f"is required for data.dataset={d.dataset}")
        zip_ok = d.dataset == "omniglot" and Path(path).is_file() and Path(path).suffix.lower() == ".zip"
        exists = Path(path).is_dir() or zip_ok or (d.download and d.dataset in ("cifar10", "cifar100"))
        _require(exists, "data.path", path, "must be an existing directory"
                 + (" or .zip file" if d.dataset == "omniglot" else "")
                 + (" (or set data.download=true)" if d.dataset.startswith("cifar") else ""))
    _int_in("data.num_classes", d.num_classes, 1, MAX_IMAGES)
    _one_of("loader.backend", ld.backend, BACKENDS)
    if ld.backend == "ffcv":
        _require(ld.beton is not None and Path(ld.beton).is_file(), "loader.beton", ld.beton,
                 "must be an existing .beton file for loader.backend=ffcv (fastssl data convert writes it)")
    _int_in("loader.batch_size", ld.batch_size, 2, MAX_BATCH)
    _require(ld.batch_size % world == 0, "loader.batch_size", ld.batch_size,
             f"must be divisible by the world size ({world})")
    _require(ld.views >= 2, "loader.views", ld.views, "must be >= 2 (a positive pair needs two views)")
    _require(ld.views <= MAX_VIEWS, "loader.views", ld.views, f"must be <= {MAX_VIEWS}")
    _int_in("loader.workers", ld.workers, 0, MAX_WORKERS)
    _require(0 <= ld.hw_decoder_load <= 1, "loader.hw_decoder_load", ld.hw_decoder_load, "must be in [0, 1]")
    _int_in("loader.prefetch", ld.prefetch, 1, MAX_PREFETCH)
    _one_of("loader.dtype", ld.dtype, ("auto",) + tuple(VIEW_DTYPES))
    if ld.dtype in ("bfloat16", "float16"):
        _require(cfg.train.precision in ("auto", VIEW_DTYPES[ld.dtype]), "loader.dtype", ld.dtype,
                 f"half-precision views need train.precision={VIEW_DTYPES[ld.dtype]} (or auto), "
                 f"not {cfg.train.precision}")
    a = cfg.augment
    _require(0 < a.crop_scale_max <= 1, "augment.crop_scale_max", a.crop_scale_max, "must be in (0, 1]")
    _require(0 < a.crop_scale_min <= a.crop_scale_max <= 1, "augment.crop_scale_min",
             (a.crop_scale_min, a.crop_scale_max), "must satisfy 0 < crop_scale_min <= crop_scale_max <= 1")
    for name in ("flip_p", "jitter_p", "grayscale_p"):
        _probability(f"augment.{name}", getattr(a, name))
    for name in ("brightness", "contrast", "saturation"):
        _finite_in(f"augment.{name}", getattr(a, name), 0, MAX_JITTER)
    _require(0 <= a.hue <= 0.5, "augment.hue", a.hue, "must be in [0, 0.5]")
    for name in ("blur_p", "solarize_p"):
        _require(len(getattr(a, name)) <= MAX_VIEWS, f"augment.{name}", getattr(a, name),
                 f"must hold at most {MAX_VIEWS} values (one per view)")
        for i, p in enumerate(getattr(a, name)):
            _probability(f"augment.{name}[{i}]", p)
    _require(math.isfinite(a.blur_sigma_max) and a.blur_sigma_max <= d.image_size, "augment.blur_sigma_max",
             a.blur_sigma_max, f"must be a finite number <= data.image_size ({d.image_size}): a wider Gaussian "
             "flattens the view to its mean")
    _require(0 < a.blur_sigma_min <= a.blur_sigma_max, "augment.blur_sigma_min", (a.blur_sigma_min, a.blur_sigma_max),
             "must satisfy 0 < blur_sigma_min <= blur_sigma_max")
    _require(0 < a.blur_kernel_frac <= 1, "augment.blur_kernel_frac", a.blur_kernel_frac, "must be in (0, 1]")
    _one_of("augment.impl", a.impl, LOSS_IMPLS)
    _require(0 <= a.solarize_threshold <= 1, "augment.solarize_threshold", a.solarize_threshold, "must be in [0, 1]")
    _one_of("model.arch", m.arch, ARCHS)
    # Narrower nets (stem < 8 channels) hang inside oneDNN's CPU convolution weight-gradient kernel
    # (torch 2.14.1, measured: a width-1/16 ResNet-18 spins forever in backward); 1/8 is fine.
    _require(math.isfinite(m.width) and m.width >= 0.125, "model.width", m.width,
             "must be >= 0.125 (stems under 8 channels hang oneDNN's CPU convolution backward)")
    _require(m.width <= MAX_WIDTH, "model.width", m.width, f"must be <= {MAX_WIDTH} ({MAX_WIDTH}x the standard widths)")
    _int_in("model.projector_layers", m.projector_layers, 1, MAX_PROJECTOR_LAYERS)
    _int_in("model.projector_hidden", m.projector_hidden, 1, MAX_DIM)
    _int_in("model.projector_out", m.projector_out, 1, MAX_DIM)
    _one_of("method.head", cfg.method.head, HEADS)
    _finite_positive("method.temperature", cfg.method.temperature)
    _one_of("method.loss_impl", cfg.method.loss_impl, LOSS_IMPLS)
    _one_of("method.loss_dtype", cfg.method.loss_dtype, LOSS_DTYPES)
    _one_of("train.on_nonfinite", cfg.train.on_nonfinite, ON_NONFINITE)
    _require(cfg.train.max_skipped_steps >= 1, "train.max_skipped_steps", cfg.train.max_skipped_steps, "must be >= 1")
    _int_in("method.n_supp", cfg.method.n_supp, 1, MAX_VIEWS - 1)
    _int_in("method.n_query", cfg.method.n_query, 1, MAX_VIEWS - 1)
    _require(ld.views == cfg.method.n_supp + cfg.method.n_query, "loader.views", ld.views,
             f"must equal method.n_supp + method.n_query = {cfg.method.n_supp} + {cfg.method.n_query} "
             "(every view of an image is a support or a query view)")
    _finite_positive("method.ridge_lambda", cfg.method.ridge_lambda)
    _finite_positive("method.svm_c", cfg.method.svm_c)
    _int_in("method.svm_iters", cfg.method.svm_iters, 1, MAX_SVM_ITERS)
    _require(cfg.method.svm_tasks >= 1, "method.svm_tasks", cfg.method.svm_tasks, "must be >= 1")
    _require(cfg.method.svm_tasks <= ld.batch_size, "method.svm_tasks", cfg.method.svm_tasks,
             f"must be <= loader.batch_size ({ld.batch_size}): a task holds at least one image")
    if cfg.method.head == "svm":
        _require(ld.batch_size % cfg.method.svm_tasks == 0, "method.svm_tasks", cfg.method.svm_tasks,
                 f"must divide loader.batch_size ({ld.batch_size}): each task holds batch_size / svm_tasks images")
    _probability("method.task_rotation_p", cfg.method.task_rotation_p)
    _require(math.isfinite(cfg.method.rotation_weight) and cfg.method.rotation_weight >= 0, "method.rotation_weight",
             cfg.method.rotation_weight, "must be a finite number >= 0")
    if cfg.method.rotation_weight > 0:
        _require(cfg.method.task_rotation_p > 0, "method.rotation_weight", cfg.method.rotation_weight,
                 "rotation prediction predicts the task rotations: needs method.task_rotation_p > 0 "
                 "(0.75 rotates uniformly over 0/90/180/270 degrees)")
    _one_of("method.query_mix", cfg.method.query_mix, QUERY_MIXES)
    if cfg.method.head == "svm" and cfg.method.query_mix != "none" and world > 1:
        t = cfg.method.svm_tasks
        _require(t % world == 0 or world % t == 0, "method.svm_tasks", t,
                 f"with query mixing under {world} processes, svm_tasks and the world size must divide one "
                 "another (mixing partners come from the same rank and must share a task)")
    _probability("method.query_mix_p", cfg.method.query_mix_p)
    _finite_positive("method.query_mix_alpha", cfg.method.query_mix_alpha)
    _require(0 <= cfg.method.byol_momentum <= 1, "method.byol_momentum", cfg.method.byol_momentum, "must be in [0, 1]")
    _int_in("method.predictor_hidden", cfg.method.predictor_hidden, 1, MAX_DIM)
    o = cfg.optim
    _one_of("optim.name", o.name, OPTIMIZERS)
    _finite_positive("optim.lr", o.lr)
    _finite_in("optim.weight_decay", o.weight_decay, 0, 1)
    _require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    _require(math.isfinite(o.trust_coefficient) and 0 < o.trust_coefficient <= 1, "optim.trust_coefficient",
             o.trust_coefficient, "must be a finite number in (0, 1]")
    _finite_in("optim.warmup_epochs", o.warmup_epochs, 0, MAX_EPOCHS)
    t = cfg.train
    _int_in("train.epochs", t.epochs, 1, MAX_EPOCHS)
    _int_in("train.max_steps", t.max_steps, 0, MAX_STEPS)
    _int_in("train.seed", t.seed, 0, MAX_SEED)
    _require(t.max_skipped_steps <= MAX_STEPS, "train.max_skipped_steps", t.max_skipped_steps,
             f"must be <= {MAX_STEPS}")
    _one_of("train.precision", t.precision, PRECISIONS)
    _one_of("train.device", t.device, DEVICES)
    _int_in("train.log_every", t.log_every, 1, MAX_STEPS)
    _int_in("train.ckpt_every", t.ckpt_every, 0, MAX_STEPS)
    k = cfg.knn
    _int_in("knn.k", k.k, 1, MAX_KNN_K)
    _finite_positive("knn.temperature", k.temperature)
    _int_in("knn.every_epochs", k.every_epochs, 0, MAX_EPOCHS)


def dump_yaml(cfg: Config) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False)
