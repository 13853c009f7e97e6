"""Dependencies run one way: kernels <- loaders <- fastssl <- bench, and each list of choices has one source.

Each layer's modules are imported in a fresh interpreter in which every higher layer raises ImportError,
so an import that goes the wrong way fails here, however deep in the layer it hides.
"""
import subprocess
import sys
import textwrap

import pytest

LAYERS = {   # package -> the fastssl packages its modules may import (fastssl itself: all but bench)
    "fastssl.kernels": ("fastssl.kernels",),
    "fastssl.loaders": ("fastssl.kernels", "fastssl.loaders"),
    "fastssl": (),
}
BLOCKER = textwrap.dedent('''
    import importlib.abc, importlib.util, pkgutil, sys
    LAYER, ALLOWED = sys.argv[1], tuple(sys.argv[2:])

    def blocked(name):
        if LAYER == "fastssl":
            return name.startswith("fastssl.bench")
        return name.startswith("fastssl.") and not name.startswith(ALLOWED)

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if blocked(name):
                raise ImportError(f"{name} imported from layer {LAYER}")
            return None

    sys.meta_path.insert(0, Block())
    package = importlib.import_module(LAYER)
    names = [LAYER] + [m.name for m in pkgutil.walk_packages(package.__path__, LAYER + ".")
                       if not m.name.endswith(".__main__")]   # that one runs the CLI
    for name in names:
        importlib.import_module(name)
    print(len(names))
''')


@pytest.mark.parametrize("layer", list(LAYERS))
def test_a_layer_imports_nothing_above_it(layer):
    result = subprocess.run([sys.executable, "-c", BLOCKER, layer, *LAYERS[layer]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout) >= 5     # the layer's modules were found and imported


def test_choices_have_one_source():
    """The config's Literal choices are what the builders dispatch on."""
    from fastssl.config import ARCHS, LOSS_IMPLS, OPTIMIZERS
    from fastssl.kernels.runtime import IMPLS
    from fastssl.loaders.factory import TRAIN_BACKENDS
    from fastssl.loaders.settings import BACKENDS
    from fastssl.models.resnet import ARCH_SPECS
    from fastssl.optim.recipe import RECIPES

    assert tuple(ARCH_SPECS) == ARCHS
    assert tuple(TRAIN_BACKENDS) == BACKENDS
    assert LOSS_IMPLS == IMPLS
    assert OPTIMIZERS == ("auto", *RECIPES)


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--set", "optim.lr=0"]])
def test_help_and_config_errors_load_no_torch(argv):
    """They answer in a fraction of a second: torch alone takes seconds to import."""
    code = ("import sys\nfrom fastssl.cli import main\ntry:\n    code = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    code = e.code\nheavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'PIL'))\n"
            "print(code, heavy, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
    assert result.stderr.strip().endswith("[]"), result.stderr[-2000:]
    assert result.stderr.strip().split("\n")[-1].startswith("2" if "--set" in argv else "0")
