"""The dataset index (loaders/datasets/index.py): start-up reads headers of new or changed files only,
and what it stores agrees with the files (PIL's sizes, torchvision's file order and labels)."""
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastssl.cli import main
from fastssl.loaders.datasets import ImageFolderDataset
from fastssl.loaders.datasets import index as index_mod
from fastssl.loaders.datasets.index import BAD, HEADER, index_path, load_index


def make_folder(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """root/c<k>/<i>.jpg, image (k, i) of size (10 + k) x (20 + i), so every size is known."""
    for k in range(classes):
        (root / f"c{k}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(np.full((10 + k, 20 + i, 3), 40 * k + i, np.uint8)).save(root / f"c{k}" / f"{i}.jpg")
    return root


def pil_sizes(paths) -> list[list[int]]:
    return [[Image.open(p).height, Image.open(p).width] for p in paths]


def test_first_start_reads_every_header_second_start_none(tmp_path):
    root = make_folder(tmp_path / "data")
    first = ImageFolderDataset(root)
    assert first.index.header_reads == 12 and index_path(root).is_file()
    second = ImageFolderDataset(root)
    assert second.index.header_reads == 0
    assert second.sizes.tolist() == pil_sizes(second.paths) == first.sizes.tolist()
    assert [str(p) for p in second.paths] == sorted(str(p) for p in root.glob("*/*.jpg"))
    assert second.labels.tolist() == [k for k in range(3) for _ in range(4)]
    assert index_path(root).parent == Path(os.environ["FASTSSL_INDEX_DIR"])


def test_changed_added_and_removed_files_are_all_that_is_read(tmp_path):
    root = make_folder(tmp_path / "data")
    load_index(root)
    changed = root / "c1" / "2.jpg"
    Image.fromarray(np.zeros((33, 44, 3), np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))                      # another mtime even within the clock's resolution
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(root / "c0" / "9.jpg")
    (root / "c2" / "0.jpg").unlink()
    index = load_index(root)
    assert index.header_reads == 2                    # the changed file and the new one
    assert len(index) == 12 and "c2/0.jpg" not in index.files
    ds = ImageFolderDataset(root)
    assert ds.index.header_reads == 0 and ds.sizes.tolist() == pil_sizes(ds.paths)
    assert ds.sizes[ds.index.files.index("c1/2.jpg")].tolist() == [33, 44]


def test_a_renamed_class_relabels_without_reading_headers_of_moved_files_again(tmp_path):
    root = make_folder(tmp_path / "data")
    load_index(root)
    (root / "c0").rename(root / "z0")                  # now the last class
    index = load_index(root)
    assert index.classes == ["c1", "c2", "z0"] and index.header_reads == 4   # moved files are new paths
    assert index.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_bad_headers_are_stored_and_settled_by_the_policy_at_every_start(tmp_path, caplog):
    root = make_folder(tmp_path / "data")
    (root / "c1" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(Exception, match="cannot be decoded"):
        ImageFolderDataset(root)
    index = load_index(root)
    at = index.files.index("c1/bad.jpg")
    assert at == 8 and index.header_reads == 0
    assert index.bad() == [(at, index.reasons[at])] and index.reasons[at].startswith("UnidentifiedImageError")
    assert index.status[at] == BAD and (np.delete(index.status, at) == HEADER).all()
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(root, on_error="skip")
    assert len(ds) == 12 and "skipped 1 file(s)" in caplog.text and str(root / "c1" / "bad.jpg") in caplog.text


def test_a_damaged_or_foreign_index_is_rebuilt(tmp_path, caplog):
    root = make_folder(tmp_path / "data")
    load_index(root)
    path = index_path(root)
    path.write_bytes(path.read_bytes()[:100])          # torn by hand: the writer itself is atomic
    with caplog.at_level(logging.WARNING):
        index = load_index(root)
    assert "unreadable" in caplog.text and index.header_reads == 12
    assert load_index(root).header_reads == 0          # and written back whole


def test_an_unwritable_index_folder_is_a_warning_and_the_run_goes_on(tmp_path, monkeypatch, caplog):
    root = make_folder(tmp_path / "data")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("FASTSSL_INDEX_DIR", str(blocker / "index"))   # under a file: cannot be created
    with caplog.at_level(logging.WARNING):
        ds = ImageFolderDataset(root)
    assert len(ds) == 12 and "FASTSSL_INDEX_DIR" in caplog.text


def test_parallel_header_pass_equals_the_serial_one_and_reports_progress(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data", classes=4, per_class=10)
    serial = load_index(root, rebuild=True)
    monkeypatch.setattr(index_mod, "PARALLEL_MIN", 8)
    monkeypatch.setattr(index_mod, "HEADER_CHUNK", 3)
    monkeypatch.setattr(index_mod, "PROGRESS_MIN", 1)
    calls = []
    parallel = load_index(root, rebuild=True, progress=lambda done, total: calls.append((done, total)))
    assert parallel.header_reads == 40 and calls[-1] == (40, 40) and len(calls) == 14
    assert np.array_equal(parallel.height, serial.height) and np.array_equal(parallel.width, serial.width)


def _build(root: str, queue) -> None:
    queue.put(load_index(Path(root)).header_reads)


def test_concurrent_starts_build_the_index_once(tmp_path):
    """Ranks starting together: the lock lets one read the headers; the others read its index."""
    root = make_folder(tmp_path / "data")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_build, args=(str(root), queue)) for _ in range(3)]
    for w in workers:
        w.start()
    reads = sorted(queue.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(timeout=60)
    assert reads == [0, 0, 12]


def test_cli_data_index_covers_each_split_and_lists_bad_files(tmp_path, capsys):
    for split in ("train", "test"):
        make_folder(tmp_path / split, classes=2, per_class=2)
    (tmp_path / "train" / "c0" / "bad.jpg").write_bytes(b"")
    assert main(["data", "index", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'train'}: 5 files in 2 classes, 5 headers read" in out
    assert f"{tmp_path / 'test'}: 4 files in 2 classes, 4 headers read" in out
    assert f"bad image: {tmp_path / 'train' / 'c0' / 'bad.jpg'}: UnidentifiedImageError" in out
    assert main(["data", "index", str(tmp_path / "train")]) == 0
    assert "0 headers read" in capsys.readouterr().out
    assert main(["data", "index", str(tmp_path / "train"), "--rebuild"]) == 0
    assert "5 headers read" in capsys.readouterr().out
    assert main(["data", "index", str(tmp_path / "missing")]) == 2
    assert "is not an existing directory" in capsys.readouterr().err


def test_links_that_lead_to_no_file_are_bad_and_settled_without_reading_them_again(
        tmp_path, capsys, broken_links, broken_link_reasons):
    """A dangling link and a loop of links are listed (not passed over, not a crash), stored BAD with why,
    kept so at the next start without a header read; a repaired link is read again."""
    root = make_folder(tmp_path / "data")
    links = broken_links(root / "c1")                 # positions 8, 9, 10: after c1/0-3.jpg
    assert main(["data", "index", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{root}: 15 files in 3 classes, 15 headers read" in out and "3 known bad" in out
    for link, why in zip(links, broken_link_reasons):
        assert f"bad image: {link}: {why}\n" in out
    index = load_index(root)
    assert index.header_reads == 0 and index.bad() == list(zip([8, 9, 10], broken_link_reasons))
    assert index.labels.tolist() == [0] * 4 + [1] * 7 + [2] * 4
    (tmp_path / ".gone").mkdir()
    Image.fromarray(np.zeros((7, 9, 3), np.uint8)).save(tmp_path / ".gone" / "missing.jpg")
    index = load_index(root)
    assert index.header_reads == 1 and index.status[8] == HEADER and [index.height[8], index.width[8]] == [7, 9]
    assert index.bad() == list(zip([9, 10], broken_link_reasons[1:]))


def test_a_tree_of_links_into_another_folder_reads_as_the_files_it_links(tmp_path):
    """A subset made of links (to files, and a linked class folder) serves the linked files; a changed
    target is read again, as the index follows the links when it stats."""
    source = make_folder(tmp_path / "source")
    subset = tmp_path / "subset"
    (subset / "c0").mkdir(parents=True)
    for name in ("1.jpg", "3.jpg"):
        os.symlink(source / "c0" / name, subset / "c0" / name)
    os.symlink(source / "c2", subset / "c2")
    ds = ImageFolderDataset(subset)
    expected = [source / "c0" / "1.jpg", source / "c0" / "3.jpg"] + [source / "c2" / f"{i}.jpg" for i in range(4)]
    assert ds.classes == ["c0", "c2"] and ds.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert ds.sizes.tolist() == pil_sizes(expected) and ds.index.header_reads == 6
    assert np.array_equal(ds.to_array(8), np.stack([np.asarray(Image.open(p).resize((8, 8), Image.BILINEAR))
                                                     for p in expected]))
    target = source / "c2" / "0.jpg"
    Image.fromarray(np.zeros((30, 5, 3), np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    again = ImageFolderDataset(subset)
    assert again.index.header_reads == 1 and again.sizes[2].tolist() == [30, 5]


def test_cli_data_index_names_a_class_folder_link_that_leads_nowhere(broken_class_links, capsys):
    """A loop is not a raw OSError, a dangling link not a class passed over: one line, no index."""
    assert main(["data", "index", str(broken_class_links["root"])]) == 2
    assert capsys.readouterr().err == f"fastssl data: error: {broken_class_links['message']}\n"
    assert not index_path(broken_class_links["train"]).exists()
