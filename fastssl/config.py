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
from typing import Any, Literal, Sequence

import yaml

from fastssl.loaders.rules import (ConfigError, check_temperature, choices, cut, finite_in, finite_positive, int_in,
                                   probability, require, shown)
from fastssl.loaders.settings import (BACKENDS, DATASETS, FASHION_MNIST_DEFAULT, GENERATED, MAX_SEED,  # noqa: F401
                                      MAX_VIEWS, ON_ERROR, AugmentConfig, DataConfig, Impl, LoaderConfig, LoadSettings)

Arch = Literal["resnet18", "resnet34", "resnet50"]                 # fastssl/models/resnet.py builds each
Optimizer = Literal["auto", "lars", "sgd", "adamw"]                 # fastssl/optim builds each
QueryMix = Literal["none", "mixup", "cutmix"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
LossDtype = Literal["auto", "fp32", "bf16"]
OnNonfinite = Literal["stop", "skip_step"]
Device = Literal["auto", "cpu", "cuda"]
Protocol = Literal["knn", "linear", "semi", "fewshot", "oneshot"]   # fastssl/evaluation/<protocol>.py each
ARCHS, OPTIMIZERS, QUERY_MIXES, PROTOCOLS = choices(Arch), choices(Optimizer), choices(QueryMix), choices(Protocol)
LOSS_IMPLS = choices(Impl)
PRECISIONS, LOSS_DTYPES, ON_NONFINITE, DEVICES = (choices(Precision), choices(LossDtype), choices(OnNonfinite),
                                                  choices(Device))
VIEW_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}   # loader.dtype -> its precision
MAX_WIDTH = 8                       # 8x the standard ResNet widths
# Projector and predictor widths: the widest published projector is 8192 (redundancy-reduction methods); at
# 16384 one hidden x hidden matrix is 1 GiB in fp32 (65536 needed 16 GiB).
MAX_DIM = 16384
# Far above any recipe's learning rate (LARS's largest published is about 10); past float32's range
# (3.4e38) an update cannot even be computed.
MAX_LR = 1e6
MAX_PROJECTOR_LAYERS = 16
MAX_EPOCHS = 10_000
MAX_STEPS = 10**9
MAX_KNN_K = 100_000
MAX_EXPANDED = 1_000_000  # nodes + scalar characters of a YAML document with its aliases expanded


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


# model.arch beyond fastssl's own ResNets: a backbone family's prefix and the library's model name
# (fastssl/models/backbones, one module per family), or "module": an nn.Module given to fastssl.train.
ARCH_FORM = re.compile(r"^[a-z0-9_]+/[A-Za-z0-9_.\-]+$")
USER_MODULE = "module"


@dataclass
class ModelConfig:
    arch: str = "resnet18"           # resnet18|34|50 (fastssl's), torchvision/<name>, timm/<name>; "module": the
                                     # nn.Module given to fastssl.train (fastssl/models/backbones)
    kwargs: dict[str, Any] = field(default_factory=dict)   # the backbone constructor's arguments, e.g. a ViT's
                                     # {img_size: 32, patch_size: 4}
    init: str | None = None          # weights to start from: a local state-dict file (nothing downloads)
    cifar_stem: bool | None = None   # 3x3 conv stem without max-pool, for small images (ResNets only);
                                     # null: on for ResNets at data.image_size <= 64, off elsewhere
    width: float = 0.125             # fastssl's ResNets: channel multiplier on the widths (64, 128, 256, 512)
    projector_hidden: int = 256
    projector_out: int = 64
    projector_layers: int = 2
    projector_bn: bool = True
    projector_out_bn: bool = False   # BN on the projection z too (SimCLR v2; lightly's SimCLR head)
    channels_last: bool = True
    sync_bn: bool = False            # under torchrun: BatchNorm statistics over the global batch (CUDA only)
    per_view_bn: bool | None = None  # BatchNorm statistics of each view apart (one forward per view, as the
                                     # momentum methods' and lightly's loops do); false: one forward per crop size;
                                     # null: the method's original code's choice (Method.per_view_bn)
    zero_init_residual: bool = True  # last BN gamma of every residual branch starts at 0 (Goyal et al.);
                                     # false: torchvision's init (gamma 1)


@dataclass
class MethodConfig:
    """The method and what every method's loss shares; each method's own settings sit in its section
    `method.<name>` (its Settings dataclass in fastssl/methods), kept here as read until
    fastssl.methods.check types and checks them: this module imports no method."""

    name: str = ""                  # a registered method (fastssl/methods); "": the one registered as default
    loss_impl: Impl = "auto"        # auto: fused Triton kernel on CUDA, torch reference on CPU; or force one
    loss_dtype: LossDtype = "auto"  # similarity losses: dtype of the unit embeddings the kernel reads
                                    # (fp32 sums either way); auto: bf16 under bf16 training, else fp32
    sections: dict[str, Any] = field(default_factory=dict)   # method.<name>: {setting: value}

    @property
    def settings(self) -> Any:
        """The selected method's section (typed once fastssl.methods.check has run)."""
        return self.sections.get(self.name)

    def __getattr__(self, name: str) -> Any:
        """`cfg.method.<name>` reads the section `method.<name>`."""
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no field or section {name!r}")


@dataclass
class TaskConfig:
    """How a batch becomes a task: the views' roles and the meta-learning tricks, for every method."""

    n_supp: int = 1          # support views per image (a prototype, a closed-form classifier's training rows)
    n_query: int = 1         # query views per image; loader.views must equal n_supp + n_query
    rotation_p: float = 0.0  # task augmentation: chance an image is rotated by 90/180/270 degrees in all
                             # its views, becoming a new class (0: off)
    rotation_weight: float = 0.0  # rotation prediction: weight of the 4-way rotation loss on the projection
                                  # (0: off; needs rotation_p > 0, whose rotations it predicts)
    query_mix: QueryMix = "none"  # none | mixup | cutmix between the query views of different images
    query_mix_p: float = 1.0      # chance a batch's queries are mixed
    query_mix_alpha: float = 1.0  # lam ~ Beta(alpha, alpha)


# Flat method.* keys of configs written before the sections existed -> where they live now. Keys of
# one method's own are named by that method (Method.RENAMED).
MOVED_KEYS = {"method.head": "method.name", "method.n_supp": "task.n_supp", "method.n_query": "task.n_query",
              "method.task_rotation_p": "task.rotation_p", "method.rotation_weight": "task.rotation_weight",
              "method.query_mix": "task.query_mix", "method.query_mix_p": "task.query_mix_p",
              "method.query_mix_alpha": "task.query_mix_alpha",
              "method.temperature": "method.<name>.temperature (the method's own section)"}


@dataclass
class OptimConfig:
    name: Optimizer = "auto"         # auto: adamw for a backbone with attention (the ViT recipes), else lars
    lr: float | None = None          # null: the optimizer's recipe value (fastssl/optim/recipe.py)
    weight_decay: float | None = None   # null: the optimizer's recipe value
    momentum: float = 0.9
    trust_coefficient: float = 0.001  # LARS only
    warmup_epochs: float = 1.0
    decay_norm_and_bias: bool = False   # weight decay on BN parameters and biases too (lightly's loops)


@dataclass
class TrainConfig:
    epochs: int = 12
    max_steps: int = 0               # > 0: stop after this many steps (tests, smoke runs)
    seed: int = 0
    precision: Precision = "auto"
    device: Device = "auto"
    compile: bool = False
    deterministic: bool = False
    log_every: int = 10
    ckpt_every: int = 0              # steps between checkpoints (0: none by step count)
    ckpt_every_epochs: int = 1       # epochs between checkpoints, at the epoch's end (0: none by epoch);
                                     # the end of the run always saves one
    cudnn_benchmark: bool = True
    on_nonfinite: OnNonfinite = "stop"  # a NaN/inf loss: stop (nothing non-finite is saved), or skip_step
    max_skipped_steps: int = 10      # skip_step: stop once this many steps were skipped
    auto_resume: bool = False        # a run folder (--out) that holds a checkpoint is continued from it, as
                                     # with --resume; restarted torchrun workers do so anyway (clusters, SLURM)


@dataclass
class KnnConfig:
    k: int = 200
    temperature: float = 0.1
    every_epochs: int = 4            # 0: only at the start and the end
    data: str | None = None          # a labelled ImageFolder (train/test splits) to score the run on; null: the
                                     # run's own data where labelled (data.dataset=images has no labels)


@dataclass
class LogConfig:
    tensorboard: bool = False        # also write each metrics.jsonl record to RUN/tensorboard/ as scalars
                                     # (needs pip install fastssl[tensorboard])


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    knn: KnnConfig = field(default_factory=KnnConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def load_settings(self) -> LoadSettings:
        """The sections the loaders are built from (they take no run config of their own)."""
        return LoadSettings(self.data, self.loader, self.augment, self.train.seed)


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert a YAML/--set value to the schema type, or fail naming the key."""
    origin = typing.get_origin(typ)
    if origin is Literal:
        allowed = typing.get_args(typ)
        if value not in allowed or isinstance(value, bool):
            raise ConfigError(f"{key}={shown(value)}: must be one of {', '.join(map(str, allowed))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if dataclasses.is_dataclass(typ):   # an item of a list of sections (augment.crops)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={shown(value)}: must be a mapping of {', '.join(_field_types(typ))}")
        return typ(**coerced_fields(typ, value, key + "."))
    if origin in (list, tuple):   # list[X] or tuple[X, ...]: a YAML list, or one value
        item = typing.get_args(typ)[0]
        items = value if isinstance(value, list) else [value]
        if not items:
            raise ConfigError(f"{key}=[]: must hold at least one value")
        return origin(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(items))
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
    if origin is dict:   # dict[str, Any]: a mapping of names to YAML values, passed on as read
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}={shown(value)}: must be a mapping of names to values, e.g. {{img_size: 32}}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported schema type {typ}")


def fill(obj: Any, values: dict, prefix: str = "") -> None:
    """Set the dataclass `obj`'s fields (nested sections too) from `values`, each coerced to its schema
    type; a ConfigError names the first unknown key or bad value by its full key (`prefix` + name)."""
    types_ = _field_types(type(obj))
    for name, value in values.items():
        key = f"{prefix}{name}"
        if isinstance(obj, MethodConfig) and name not in types_:
            _add_section(obj, key, name, value)
            continue
        if name not in types_ or name == "sections":
            raise ConfigError(f"unknown key {shown(key)} (known in {prefix.rstrip('.') or 'the config'}: "
                              f"{', '.join(n for n in types_ if n != 'sections')})")
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{key}={shown(value)}: must be a mapping of "
                                  f"{', '.join(_field_types(type(current)))}")
            fill(current, value, key + ".")
        elif isinstance(current, dict) and isinstance(value, dict):   # a later file or --set adds keys
            setattr(obj, name, {**current, **_coerce(key, value, types_[name])})
        else:
            setattr(obj, name, _coerce(key, value, types_[name]))


def coerced_fields(cls: type, values: dict, prefix: str = "") -> dict:
    """`values` for the dataclass `cls`'s fields, each coerced to its type as config values are (for
    settings built elsewhere, such as an evaluation protocol's); a ConfigError names an unknown key."""
    types_ = _field_types(cls)
    unknown = [name for name in values if name not in types_]
    if unknown:
        raise ConfigError(f"unknown key {shown(prefix + unknown[0])} (known in {prefix.rstrip('.')}: "
                          f"{', '.join(types_)})")
    return {name: _coerce(prefix + name, value, types_[name]) for name, value in values.items()}


def _add_section(method: MethodConfig, key: str, name: str, values: Any) -> None:
    """method.<name>: one method's settings, merged over what earlier files and overrides gave."""
    if key in MOVED_KEYS:
        raise ConfigError(f"{key}: moved to {MOVED_KEYS[key]}; this config was written for an older fastssl")
    current = method.sections.get(name)
    if dataclasses.is_dataclass(current):       # typed already: fill it, so its rules are checked again
        if not isinstance(values, dict):
            raise ConfigError(f"{key}={shown(values)}: must be a mapping of {', '.join(_field_types(type(current)))}")
        fill(current, values, key + ".")
    elif isinstance(values, dict) and isinstance(current, dict):
        method.sections[name] = {**current, **values}
    else:
        method.sections[name] = values


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
                overrides: Sequence[str] = (), settings: dict[str, Any] | None = None) -> Config:
    """Defaults, then the YAML file(s) in order (a run config, then recipe fragments such as
    those in configs/augment/), then `settings` ({"train.epochs": 10}: values as Python gives them, read
    as a file's), then `--set` overrides; validated before returning."""
    cfg = Config()
    paths = [] if path is None else [path] if isinstance(path, (str, os.PathLike)) else list(path)
    for path in paths:
        p = Path(path)
        source = f"config file {shown(str(p))}"
        if not p.exists():
            raise ConfigError(f"{source}: does not exist")
        if p.is_dir():
            raise ConfigError(f"{source}: is a directory; -c takes a YAML file (e.g. configs/quickstart.yaml)")
        try:
            data = p.read_bytes()   # bytes: the YAML reader decodes UTF-8/16/32 and names a bad byte
        except OSError as e:
            raise ConfigError(f"{source}: cannot be read ({e.strerror})") from None
        values = load_yaml(data, source)
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: must hold a mapping at the top level")
        fill(cfg, values)
    dotted = [(key, value) for key, value in (settings or {}).items()]
    for key, value in dotted + [parse_override(text) for text in overrides]:
        parts = key.split(".") if isinstance(key, str) else key
        if not all(parts):
            raise ConfigError(f"setting {shown(key)}: empty key component")
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        fill(cfg, nested)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    """The config as the YAML files write it: each method's section inside `method`."""
    tree = dataclasses.asdict(cfg)
    sections = tree["method"].pop("sections")
    tree["method"].update(sections)     # asdict has turned typed sections into mappings
    return tree


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def validate(cfg: Config, world: int | None = None) -> None:
    """Check every rule; raise ConfigError naming the first broken one. Choices (Literal fields) were
    checked when the values were read; each loader section checks itself, then the rules across sections."""
    world = world_size() if world is None else world
    _check_choices(cfg)
    cfg.data.validate()
    cfg.loader.validate(world)
    cfg.augment.validate(cfg.data.image_size, cfg.loader.views)
    ld = cfg.loader
    if ld.dtype in VIEW_DTYPES and ld.dtype != "float32":
        require(cfg.train.precision in ("auto", VIEW_DTYPES[ld.dtype]), "loader.dtype", ld.dtype,
                f"half-precision views need train.precision={VIEW_DTYPES[ld.dtype]} (or auto), "
                f"not {cfg.train.precision}")
    _validate_model(cfg.model)
    _validate_task(cfg.task, ld)
    crops = cfg.augment.crops
    if crops is not None and len({group.size for group in crops}) > 1:
        require(cfg.task.query_mix != "cutmix", "task.query_mix", cfg.task.query_mix,
                "cutmix pastes one box into every query view, and augment.crops gives the views several sizes; "
                "use mixup or none")
    _validate_optim(cfg.optim)
    _validate_train(cfg.train)
    k = cfg.knn
    int_in("knn.k", k.k, 1, MAX_KNN_K)
    check_temperature("knn.temperature", k.temperature)
    int_in("knn.every_epochs", k.every_epochs, 0, MAX_EPOCHS)
    if k.data is not None:
        require(Path(k.data).is_dir(), "knn.data", k.data, "must be an existing folder (a labelled ImageFolder "
                "with its train and test splits)")


def _check_choices(section: Any, prefix: str = "") -> None:
    """Every Literal field holds one of its choices, also where code set it rather than a file."""
    for name, typ in _field_types(type(section)).items():
        value = getattr(section, name)
        if dataclasses.is_dataclass(value):
            _check_choices(value, f"{prefix}{name}.")
        elif typing.get_origin(typ) is Literal:
            _coerce(f"{prefix}{name}", value, typ)


def _validate_model(m: ModelConfig) -> None:
    require(m.arch in ARCHS or m.arch == USER_MODULE or ARCH_FORM.match(m.arch) is not None, "model.arch", m.arch,
            f"must be one of {', '.join(ARCHS)} (fastssl's ResNets), or FAMILY/NAME such as torchvision/resnet50 "
            "or timm/vit_small_patch16_224")
    if m.init is not None:
        require(Path(m.init).is_file(), "model.init", m.init, "must be an existing weights file (a state dict "
                "saved with torch.save or safetensors; nothing is downloaded)")
    # Narrower nets (stem < 8 channels) hang inside oneDNN's CPU convolution weight-gradient kernel
    # (torch 2.14.1, measured: a width-1/16 ResNet-18 spins forever in backward); 1/8 is fine.
    require(math.isfinite(m.width) and m.width >= 0.125, "model.width", m.width,
            "must be >= 0.125 (stems under 8 channels hang oneDNN's CPU convolution backward)")
    require(m.width <= MAX_WIDTH, "model.width", m.width, f"must be <= {MAX_WIDTH} ({MAX_WIDTH}x the standard widths)")
    int_in("model.projector_layers", m.projector_layers, 1, MAX_PROJECTOR_LAYERS)
    int_in("model.projector_hidden", m.projector_hidden, 1, MAX_DIM)
    int_in("model.projector_out", m.projector_out, 1, MAX_DIM)


def _validate_task(task: TaskConfig, ld: LoaderConfig) -> None:
    int_in("task.n_supp", task.n_supp, 1, MAX_VIEWS - 1)
    int_in("task.n_query", task.n_query, 1, MAX_VIEWS - 1)
    require(ld.views == task.n_supp + task.n_query, "loader.views", ld.views,
            f"must equal task.n_supp + task.n_query = {task.n_supp} + {task.n_query} "
            "(every view of an image is a support or a query view)")
    probability("task.rotation_p", task.rotation_p)
    require(math.isfinite(task.rotation_weight) and task.rotation_weight >= 0, "task.rotation_weight",
            task.rotation_weight, "must be a finite number >= 0")
    if task.rotation_weight > 0:
        require(task.rotation_p > 0, "task.rotation_weight", task.rotation_weight,
                "rotation prediction predicts the task rotations: needs task.rotation_p > 0 "
                "(0.75 rotates uniformly over 0/90/180/270 degrees)")
    probability("task.query_mix_p", task.query_mix_p)
    finite_positive("task.query_mix_alpha", task.query_mix_alpha)


def _validate_optim(o: OptimConfig) -> None:
    if o.lr is not None:
        require(math.isfinite(o.lr) and 0 < o.lr <= MAX_LR, "optim.lr", o.lr,
                f"must be a finite number in (0, {MAX_LR:g}]")
    if o.weight_decay is not None:
        finite_in("optim.weight_decay", o.weight_decay, 0, 1)
    require(0 <= o.momentum < 1, "optim.momentum", o.momentum, "must be in [0, 1)")
    require(math.isfinite(o.trust_coefficient) and 0 < o.trust_coefficient <= 1, "optim.trust_coefficient",
            o.trust_coefficient, "must be a finite number in (0, 1]")
    finite_in("optim.warmup_epochs", o.warmup_epochs, 0, MAX_EPOCHS)


def _validate_train(t: TrainConfig) -> None:
    int_in("train.epochs", t.epochs, 1, MAX_EPOCHS)
    int_in("train.max_steps", t.max_steps, 0, MAX_STEPS)
    int_in("train.seed", t.seed, 0, MAX_SEED)
    require(t.max_skipped_steps >= 1, "train.max_skipped_steps", t.max_skipped_steps, "must be >= 1")
    require(t.max_skipped_steps <= MAX_STEPS, "train.max_skipped_steps", t.max_skipped_steps,
            f"must be <= {MAX_STEPS}")
    int_in("train.log_every", t.log_every, 1, MAX_STEPS)
    int_in("train.ckpt_every", t.ckpt_every, 0, MAX_STEPS)
    int_in("train.ckpt_every_epochs", t.ckpt_every_epochs, 0, MAX_EPOCHS)


def dump_yaml(cfg: Config) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False)
