"""Hostile config values: YAML 1.2 scalars, exact types, bounds on every field, one-line CLI errors,
an unwritable --out, alias bombs and object tags. Each case names what it guards against."""
import math
import os
import time
import typing

import pytest

from fastssl import config as config_mod
from fastssl import methods
from fastssl.cli import main
from fastssl.config import PROTOCOLS, Config, ConfigError, dump_yaml, load_config


class _Built(Exception):
    """Raised in place of building the Trainer: no test here may start a training run."""


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    from fastssl.engine import trainer

    def built(*args, **kwargs):
        raise _Built()

    monkeypatch.setattr(trainer, "Trainer", built)


# YAML 1.2 core schema: plain scalar -> value (PyYAML's 1.1 reads `yes` as true, `1e3` as a string,
# `010` as octal 8, `.1e1` as a string that the old coercion turned into 10.0).
SCALARS = [
    (".1e1", 1.0), ("1e3", 1000.0), ("-1.5E-2", -0.015), ("+12", 12), ("-0", 0), ("010", 10),
    ("0o17", 15), ("0x1F", 31), (".inf", math.inf), ("-.Inf", -math.inf), ("+.INF", math.inf),
    ("true", True), ("False", False), ("TRUE", True), ("null", None), ("~", None), ("", None),
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("Yes", "Yes"), ("tRue", "tRue"),
    ("1_000", "1_000"), ("0b101", "0b101"), ("1:30", "1:30"), ("2001-12-14", "2001-12-14"), ("0x", "0x"),
    ("'1e3'", "1e3"), ("1.", 1.0), ("<<", "<<"), ("=", "="),
]


@pytest.mark.parametrize("text,expected", SCALARS, ids=[s[0] or "empty" for s in SCALARS])
def test_plain_scalars_resolve_by_the_yaml_1_2_core_schema(text, expected):
    value = config_mod.load_yaml(text, "test")
    assert value == expected and type(value) is type(expected)


def test_nan_is_a_float():
    assert all(math.isnan(config_mod.load_yaml(t, "test")) for t in (".nan", ".NaN", ".NAN"))


@pytest.mark.parametrize("override,path,expected", [
    ("optim.lr=.1e1", ("optim", "lr"), 1.0),              # was 10.0: the leading dot was stripped
    ("optim.lr=1e3", ("optim", "lr"), 1000.0),
    ("optim.lr=2", ("optim", "lr"), 2.0),                 # an int is a number for a float field
    ("data.num_train=010", ("data", "num_train"), 10),    # was 8 (YAML 1.1 octal)
    ("data.num_train=0o20", ("data", "num_train"), 16),   # was refused (a string in 1.1)
    ("data.num_train=0x20", ("data", "num_train"), 32),
    ("data.train_split=no", ("data", "train_split"), "no"),  # was False, then refused
    ("data.train_split=2001-12-14", ("data", "train_split"), "2001-12-14"),  # was a date
    ("data.path=~", ("data", "path"), None),
    ("model.cifar_stem=FALSE", ("model", "cifar_stem"), False),
])
def test_set_values_follow_yaml_1_2(override, path, expected):
    value = getattr(getattr(load_config(None, [override]), path[0]), path[1])
    assert value == expected and type(value) is type(expected)


def test_yaml_files_follow_yaml_1_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: .1e1\n  warmup_epochs: 2e0\ndata:\n  test_split: off\n  num_test: 0o12\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.warmup_epochs, cfg.data.test_split, cfg.data.num_test) == (1.0, 2.0, "off", 10)


@pytest.mark.parametrize("override,message", [
    ("model.cifar_stem=yes", "model.cifar_stem='yes': must be true or false"),   # was true
    ("model.cifar_stem=on", "model.cifar_stem='on': must be true or false"),
    ("model.cifar_stem=1", "model.cifar_stem=1: must be true or false"),
    ("loader.batch_size=1.5", "loader.batch_size=1.5: must be an integer"),
    ("loader.batch_size=64.0", "loader.batch_size=64.0: must be an integer"),
    ("loader.batch_size=1e2", "loader.batch_size=100.0: must be an integer"),
    ("loader.batch_size=true", "loader.batch_size=True: must be an integer"),
    ("optim.lr=true", "optim.lr=True: must be a number"),
    ("optim.lr='0.5'", "optim.lr='0.5': must be a number"),                     # was 0.5: strings were parsed
    ("optim.lr=.5.", "optim.lr='.5.': must be a number"),
    ("optim.lr=1" + "0" * 400, "optim.lr=10000000000"),                         # was an OverflowError
    ("data.train_split=1e3", "data.train_split=1000.0: must be a string"),
    ("data.train_split=true", "data.train_split=True: must be a string"),
    ("data.train_split=~", "data.train_split=None: must be a string"),
])
def test_coercion_is_exact_and_names_key_value_rule(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value) and len(str(info.value)) < 1000


BOUNDS = [
    # (overrides, expected message): infinities and unbounded sizes that used to pass validation
    (["optim.warmup_epochs=.inf"], "optim.warmup_epochs=inf: must be a finite number in [0, 10000]"),
    (["data.image_size=100000"], "data.image_size=100000: must be <= 4096"),
    (["data.image_size=4096"], "N images x S^2 x 3 bytes"),
    (["data.dataset=imagefolder", "data.path=/tmp", "data.image_size=8192"], "must be <= 4096"),
    (["augment.brightness=.inf"], "augment.brightness=inf: must be a finite number in [0, 10]"),
    (["augment.contrast=1e9"], "augment.contrast=1000000000.0: must be a finite number in [0, 10]"),
    (["augment.saturation=.nan"], "augment.saturation=nan: must be a finite number in [0, 10]"),
    (["augment.blur_sigma_max=.inf"], "augment.blur_sigma_max=inf: must be a finite number <= data.image_size"),
    (["augment.blur_p=[0.5, .nan]"], "augment.blur_p[1]=nan: must be a probability in [0, 1]"),
    (["augment.solarize_p=[" + ", ".join(["0.5"] * 33) + "]"], "must hold at most loader.views = 2 values"),
    (["augment.blur_p=[0.5,0.5,0.5]"], "augment.blur_p=[0.5, 0.5, 0.5]: must hold at most loader.views = 2 values "
                                       "(one per view): a value past the last view would never be used"),
    (["data.dataset=imagefolder", "data.path="], "data.path='': must name a folder (an empty path would read the "
                                                 "current directory)"),
    (["loader.batch_size=1000000"], "loader.batch_size=1000000: must be <= 65536"),
    (["loader.views=1000", "task.n_query=999"], "loader.views=1000: must be <= 32"),
    (["loader.workers=100000"], "loader.workers=100000: must be <= 256"),
    (["loader.prefetch=100000"], "loader.prefetch=100000: must be <= 64"),
    (["data.num_train=100000000"], "data.num_train=100000000: must be <= 10000000"),
    (["data.seed=-1"], "data.seed=-1: must be >= 0"),
    (["train.seed=4294967296"], "train.seed=4294967296: must be <= 4294967295"),
    (["train.epochs=1000000"], "train.epochs=1000000: must be <= 10000"),
    (["train.max_steps=10000000000"], "train.max_steps=10000000000: must be <= 1000000000"),
    (["knn.k=1000000000"], "knn.k=1000000000: must be <= 100000"),
    (["model.width=1e6"], "model.width=1000000.0: must be <= 8"),
    (["model.projector_hidden=100000000"], "model.projector_hidden=100000000: must be <= 16384"),
    # Numbers that passed validation and then failed with a traceback inside the step:
    (["optim.lr=1e308"], "optim.lr=1e+308: must be a finite number in (0, 1e+06]"),          # overflow in LARS
    (["method.contrastive.temperature=5e-324"], "method.contrastive.temperature=5e-324: must be a finite number in "
                                                "[0.0001, 10000.0]"),                       # scale=inf in sim_xent
    (["knn.temperature=1e-300"], "knn.temperature=1e-300: must be a finite number in [0.0001, 10000.0]"),
    (["method.name=r2d2", "method.r2d2.ridge_lambda=1e-300"], "method.r2d2.ridge_lambda=1e-300: must be a finite "
                                                             "number in [1e-06, 1000000.0]"),  # 0 in fp32
    (["method.name=svm", "method.svm.c=1e308"], "method.svm.c=1e+308: must be a finite number in [1e-06, 1000000.0]"),
    (["method.name=byol", "method.byol.predictor_hidden=65536"], "method.byol.predictor_hidden=65536: must be <= 16384"),
    (["model.projector_layers=1000"], "model.projector_layers=1000: must be <= 16"),
    (["method.name=svm", "method.svm.iters=1000000"], "method.svm.iters=1000000: must be <= 1000"),
    (["method.name=svm", "method.svm.tasks=1000"], "method.svm.tasks=1000: must be <= loader.batch_size (128)"),
    (["optim.weight_decay=.inf"], "optim.weight_decay=inf: must be a finite number in [0, 1]"),
    (["optim.trust_coefficient=1e9"], "optim.trust_coefficient=1000000000.0: must be a finite number in (0, 1]"),
]


@pytest.mark.parametrize("overrides,message", BOUNDS, ids=[" ".join(b[0])[:40] for b in BOUNDS])
def test_numeric_fields_are_finite_and_bounded(overrides, message):
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        methods.check(load_config(None, overrides))       # the config's rules, then the method's
    assert message in str(info.value)
    assert time.monotonic() - start < 2


def test_generated_data_must_fit_in_memory():
    """shapes holds N x S^2 x 3 bytes: at 4096 px the default 8,000 images are 375 GiB."""
    with pytest.raises(ConfigError, match=r"data.image_size=4096: .*8,000 generated images.* 375.0 GiB.*<= 16 GiB"):
        load_config(None, ["data.image_size=4096"])
    assert load_config(None, ["data.image_size=4096", "data.num_train=64", "data.num_test=32"]).data.image_size == 4096


def _leaf_fields():
    for section, cls in typing.get_type_hints(Config).items():
        for name, typ in typing.get_type_hints(cls).items():
            yield f"{section}.{name}", typ


NUMERIC = [(key, typ) for key, typ in _leaf_fields() if typ in (int, float, list[float])]


@pytest.mark.parametrize("key,typ", NUMERIC, ids=[k for k, _ in NUMERIC])
def test_every_numeric_field_refuses_huge_and_non_finite_values(key, typ):
    """Every int field has a finite maximum and every float field refuses infinity and NaN, each error
    naming the field (a new field without a rule fails here)."""
    values = ["1000000000000000", "-1000000000000000"] if typ is int else [".inf", "-.inf", ".nan"]
    for value in values:
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"{key}={value}"])
        assert key in str(info.value), (value, str(info.value))


CLI_ERRORS = [
    (["--set", "optim.lr=[1,"], "--set 'optim.lr=[1,': not valid YAML"),     # was a yaml traceback
    (["--set", "optim.lr=[" * 5000], "not valid YAML"),                        # was a RecursionError
    (["--set", "optim.lr=!!python/object/apply:os.system ['true']"], "python/object/apply:os.system"),
    (["--set", "model.cifar_stem=!!bool yes"], "not valid YAML ('yes' is not true or false"),
    (["--set", "optim.lr=!!float fast"], "not valid YAML (could not convert string to float: 'fast'"),
    (["--set", "nokey"], "--set 'nokey': must look like key.sub=value"),
    (["--set", "optim..lr=1"], "empty key component"),
    (["--set", "unknown.key=1"], "unknown key 'unknown'"),
    (["--set", "optim=1"], "optim=1: must be a mapping of"),
    (["-c", "/no/such/run.yaml"], "config file '/no/such/run.yaml': does not exist"),
]


def _one_line_error(capsys, argv) -> str:
    assert main(["train"] + argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("fastssl train: error: "), err
    assert len(err) < 1000
    return err


@pytest.mark.parametrize("argv,message", CLI_ERRORS, ids=[c[1][:40] for c in CLI_ERRORS])
def test_cli_errors_are_one_line_without_traceback(argv, message, capsys):
    assert message in _one_line_error(capsys, argv)


@pytest.mark.parametrize("text,message", [
    ("optim:\n  lr: [1,\n  momentum: 0.9\n", "not valid YAML"),        # was a multi-line message
    ("- optim\n- lr\n", "must hold a mapping at the top level"),
    ("optim:\n  lr: 1\noptim:\n  lr: 2\n", "duplicate key 'optim'"),     # was: the second silently won
    ("optim: {lr: 1, lr: 2}\n", "duplicate key 'lr'"),
    ("optim:\n  lr: !!python/object/apply:os.system ['touch {marker}']\n", "python/object/apply:os.system"),
    ("optim:\n  lr: !!python/name:os.system\n", "python/name:os.system"),
    ("optim:\n  lr: &a [1, *a]\n", "refers to itself"),
    (b"optim:\n  lr: \xff\xfe\n", "invalid start byte"),               # was a UnicodeDecodeError traceback
])
def test_bad_yaml_files_give_one_line_errors(text, message, tmp_path, capsys):
    marker = tmp_path / "marker"
    path = tmp_path / "run.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.replace("{marker}", str(marker)))
    assert message in _one_line_error(capsys, ["-c", str(path)])
    assert not marker.exists()   # object tags are refused, not run


def _alias_bomb(levels: int = 6) -> str:
    """A flow sequence of 10^levels leaves from a few hundred bytes (the "billion laughs")."""
    rows = ["&l0 [" + ", ".join(["lol"] * 10) + "]"]
    rows += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "[" + ", ".join(rows) + "]"


def test_alias_bomb_gives_a_short_error_fast(tmp_path, capsys):
    """Was an 8 MB message: the aliases expanded in the error's repr of the value."""
    path = tmp_path / "bomb.yaml"
    path.write_text("optim:\n  lr: " + _alias_bomb() + "\n")
    start = time.monotonic()
    err = _one_line_error(capsys, ["-c", str(path)])
    assert time.monotonic() - start < 2 and "aliases expanded" in err, err
    err = _one_line_error(capsys, ["--set", "optim.lr=" + _alias_bomb()])
    assert "aliases expanded" in err, err


def test_scalar_alias_bomb_is_counted_by_characters(tmp_path):
    text = "optim:\n  lr: [&s '" + "x" * 10_000 + "', " + ", ".join(["*s"] * 1000) + "]\n"
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="aliases expanded"):
        load_config(path)


@pytest.mark.parametrize("override", ["data.dataset=" + "x" * 1_000_000, "x" * 1_000_000 + ".key=1",
                                      "optim.lr=[" + "1, " * 100_000 + "]", "x" * 1_000_000])
def test_echoed_values_are_cut_to_a_readable_length(override):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert len(str(info.value)) < 1000 and "characters)" in str(info.value)


def test_dumped_config_reads_back_the_same_under_yaml_1_2(tmp_path):
    """Strings that YAML 1.1 writes bare but 1.2 reads as numbers (0o7, 1e3) are quoted on dump."""
    cfg = load_config(None, ["data.train_split='0o7'", "data.test_split='1e3'", "data.path='yes'"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


def test_a_config_path_that_is_a_folder_or_a_device_is_named_as_such(tmp_path, capsys):
    """Both used to say "does not exist". A folder is refused as what it is; /dev/null and a pipe (bash's
    <(...)) are files to read: empty, the defaults."""
    assert main(["train", "-c", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"fastssl train: error: config file {str(tmp_path)!r}: is a "
                                               "directory; -c takes a YAML file (e.g. configs/quickstart.yaml)")
    assert load_config("/dev/null") == load_config(None)
    read, write = os.pipe()
    os.write(write, b"optim:\n  lr: 0.25\n")
    os.close(write)
    try:
        assert load_config(f"/dev/fd/{read}").optim.lr == 0.25
    finally:
        os.close(read)


def test_the_top_level_help_lists_every_evaluation_protocol(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())   # argparse wraps the line
    assert f"evaluate a trained encoder's features: {', '.join(PROTOCOLS)} " in text and "oneshot" in PROTOCOLS
