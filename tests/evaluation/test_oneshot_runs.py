"""The one-shot protocol (Lake et al., 2015) on generated runs whose errors are known by construction,
result files named by the data they score, and the raw-pixel figure on the real all_runs.zip."""
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.cli import main
from fastssl.config import load_config
from fastssl.engine.trainer import Trainer
from fastssl.evaluation.oneshot import nearest
from fastssl.loaders.datasets import DataError
from fastssl.loaders.datasets.omniglot import load_oneshot_runs

RUNS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot-all-runs.zip"
RUN = ["data.num_train=256", "data.num_test=128", "loader.batch_size=32", "train.max_steps=1",
       "train.precision=fp32", "train.device=cpu", "knn.k=5", "knn.every_epochs=0", "model.width=0.125",
       "model.projector_hidden=16", "model.projector_out=8", "augment.impl=reference", "method.loss_impl=reference"]


def drawing(cls: int) -> bytes:
    """Class c: a white 16x16 square with a black bar in row block c: far apart in pixels per class."""
    pixels = np.full((16, 16), 255, np.uint8)
    pixels[4 * cls:4 * cls + 4] = 0
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def runs_zip(path: Path, wrong: dict[str, int]) -> Path:
    """Runs of 4 classes and 4 test drawings, test item k a copy of class k, relabelled as class k+1 in
    the first `wrong[run]` lines: those are the errors a nearest-neighbour rule must make."""
    with zipfile.ZipFile(path, "w") as z:
        for run, errors in wrong.items():
            lines = []
            for k in range(4):
                z.writestr(f"{run}/training/class0{k + 1}.png", drawing(k))
                z.writestr(f"{run}/test/item0{k + 1}.png", drawing(k))
                lines.append(f"{run}/test/item0{k + 1}.png {run}/training/class0{(k + (k < errors)) % 4 + 1}.png")
            z.writestr(f"{run}/class_labels.txt", "\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("oneshot") / "run"
    Trainer(load_config(None, RUN), out).fit()
    return out


def test_reader_and_truth(tmp_path):
    runs = load_oneshot_runs(runs_zip(tmp_path / "all_runs.zip", {"run01": 0, "run02": 2}))
    assert [r.name for r in runs] == ["run01", "run02"]
    assert runs[0].training.shape == (4, 16, 16, 3) and runs[1].truth.tolist() == [1, 2, 2, 3]
    with pytest.raises(DataError, match="hold no runNN/class_labels.txt"):
        load_oneshot_runs(runs_zip(tmp_path / "empty.zip", {}))


def test_nearest_cosine_and_euclidean_differ_where_they_should():
    training = torch.tensor([[1.0, 0.0], [10.0, 10.0]])
    test = torch.tensor([[2.0, 1.9]])   # closer to [1, 0] in distance, to [10, 10] in angle
    assert nearest(training, test, "cosine").tolist() == [1] and nearest(training, test, "euclidean").tolist() == [0]


def test_cli_scores_encoder_and_raw_pixels(run_dir, tmp_path, capsys):
    path = runs_zip(tmp_path / "all_runs.zip", {"run01": 0, "run02": 1, "run03": 3})
    assert main(["eval", "--ckpt", str(run_dir / "last.pt"), "--protocol", "oneshot", "--opt", f"runs={path}"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    written = Path(out.split(" -> ")[-1])
    assert written.parent == run_dir and written.name.startswith("eval_oneshot_all_runs-")
    record = json.loads(written.read_text())
    pixels = record["results"]["raw_pixels"]
    assert pixels["per_run"] == {"run01": 0.0, "run02": 0.25, "run03": 0.75}
    assert pixels["mean_error"] == pytest.approx(1 / 3) and pixels["feature_dim"] == 3 * 32 * 32
    assert 0 <= record["results"]["encoder"]["mean_error"] <= 1 and record["settings"]["metric"] == "cosine"


def test_options_fail_before_the_checkpoint(tmp_path, capsys):
    assert main(["eval", "--ckpt", str(tmp_path / "none.pt"), "--protocol", "oneshot"]) == 2
    assert "runs is required" in capsys.readouterr().err
    assert main(["eval", "--ckpt", str(tmp_path / "none.pt"), "--protocol", "oneshot", "--opt", "runs=x",
                 "--opt", "metric=l1"]) == 2
    assert "oneshot.metric='l1': must be one of cosine, euclidean" in capsys.readouterr().err


def test_results_on_other_data_do_not_overwrite_the_runs_own(run_dir, capsys):
    """`--set data.*` evaluates other data: its file is tagged; the run's own data keeps eval_fewshot.json."""
    opts = ["--opt", "shots=1", "--opt", "queries=2", "--opt", "episodes=5"]
    base = ["eval", "--ckpt", str(run_dir / "last.pt"), "--protocol", "fewshot"] + opts
    assert main(base) == 0
    assert main(base + ["--set", "data.num_test=64"]) == 0
    assert main(base + ["--set", "data.num_test=64"]) == 0   # the same data: the same file
    names = sorted(p.name for p in run_dir.glob("eval_fewshot*.json"))
    assert len(names) == 2 and names[0] == "eval_fewshot.json" and names[1].startswith("eval_fewshot_shapes-")
    capsys.readouterr()


def test_raw_pixel_figure_on_the_real_runs(run_dir, capsys):
    if not RUNS.is_file():
        pytest.skip(f"real Omniglot runs not present ({RUNS}): ../shared is absent")
    assert main(["eval", "--ckpt", str(run_dir / "last.pt"), "--protocol", "oneshot", "--opt", f"runs={RUNS}",
                 "--set", "data.image_size=28"]) == 0
    written = Path(capsys.readouterr().out.strip().splitlines()[-1].split(" -> ")[-1])
    results = json.loads(written.read_text())["results"]
    assert results["runs"] == 20 and len(results["raw_pixels"]["per_run"]) == 20
    assert all(r * 20 == round(r * 20) for r in results["raw_pixels"]["per_run"].values())
    assert results["raw_pixels"]["mean_error"] == pytest.approx(0.7725, abs=0.01)   # the README figure
