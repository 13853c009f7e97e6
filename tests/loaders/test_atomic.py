"""loaders/atomic.py: a whole-file write lands entirely or not at all, and a full disk says so."""
import errno

import numpy as np
import pytest

from fastssl.loaders import atomic
from fastssl.loaders.atomic import NoSpaceError


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "eval_knn.json"
    atomic.write_text(path, "old\n")
    atomic.write_text(path, "new\n")
    assert path.read_text() == "new\n" and sorted(p.name for p in tmp_path.iterdir()) == ["eval_knn.json"]


def test_a_full_disk_keeps_the_old_file_removes_the_temporary_and_names_the_size(tmp_path):
    path = tmp_path / "result.csv"
    path.write_text("previous\n")
    with pytest.raises(NoSpaceError, match=r"no space left on device: .*result.csv needs about 2.0 MB"):
        with atomic.atomic_path(path, needed=2 * 2**20) as tmp:
            tmp.write_bytes(b"partial")
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as e:        # as a library wraps it: ENOSPC is found in the chain
                raise RuntimeError("unexpected pos 1234") from e
    assert path.read_text() == "previous\n" and not (tmp_path / "result.csv.tmp").exists()


def test_any_other_failure_is_re_raised_unchanged_and_cleaned_up(tmp_path):
    path = tmp_path / "x.md"
    with pytest.raises(KeyError):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_csv_and_figures_are_written_whole(tmp_path):
    atomic.write_csv(tmp_path / "r.csv", ["a", "b"], [{"a": 1, "b": "x,y"}])
    assert (tmp_path / "r.csv").read_text().splitlines() == ["a,b", '1,"x,y"']
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    atomic.save_figure(fig, tmp_path / "p.png")
    plt.close(fig)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "r.csv"]


def test_a_small_size_is_named_by_its_first_significant_digit(tmp_path):
    """A metrics line needs a few hundred bytes: "needs about 0.0 MB" would read as nothing needed."""
    assert "metrics.jsonl needs about 0.0002 MB" in str(atomic.no_space(tmp_path / "metrics.jsonl", 250))
    assert "features.npy needs about 0.03 MB" in str(atomic.no_space(tmp_path / "features.npy", 128 * 64 * 4))
    assert "last.pt needs about 1.5 MB" in str(atomic.no_space(tmp_path / "last.pt", 3 * 2**19))


def test_an_array_is_saved_under_its_own_name(tmp_path):
    """np.save given the temporary name `x.npy.tmp` would have written `x.npy.tmp.npy`."""
    array = np.arange(10, dtype=np.int64) * 3
    atomic.save_npy(tmp_path / "x.npy", array)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]
    loaded = np.load(tmp_path / "x.npy")
    assert loaded.dtype == np.int64 and loaded.tolist() == [3 * i for i in range(10)]
