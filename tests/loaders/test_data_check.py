"""`fastssl data check` and loaders/check.py: every bad file named with its reason, exit code set."""
import numpy as np
import pytest
from PIL import Image

from fastssl.cli import main
from fastssl.loaders import check
from fastssl.loaders.datasets import ImageFolderDataset
from fastssl.loaders.datasets.base import DataError
from fastssl.loaders.datasets.files import decode_many
from fastssl.loaders.datasets.index import BAD, DECODED, index_path, load_index


def test_check_folder_reports_each_kind_of_bad_data(bad_folder):
    calls = []
    report = check.check_folder(bad_folder["root"], progress=lambda done, total: calls.append((done, total)))
    assert not report.ok
    assert sorted(p for p, _ in report.bad) == sorted(bad_folder["bad"])
    assert all(why for _, why in report.bad)
    assert report.empty_classes == [bad_folder["empty"]]
    assert report.non_images == [bad_folder["non_image"]]
    assert report.images == bad_folder["images"]
    assert calls[-1] == (9, 9)


def test_decode_many_gives_pixels_and_failures_in_order(tmp_path):
    good = tmp_path / "g.png"
    Image.fromarray(np.full((5, 7, 3), 9, np.uint8)).save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"")
    out = np.zeros((3, 4, 4, 3), np.uint8)
    failures = decode_many([good, bad, good], size=4, out=out)
    assert [i for i, _ in failures] == [1] and failures[0][1].startswith("UnidentifiedImageError")
    assert (out[[0, 2]] == 9).all() and (out[1] == 0).all()


def test_cli_data_check_exit_codes_and_paths(bad_folder, tmp_path, capsys):
    assert main(["data", "check", str(bad_folder["root"])]) == 1
    out = capsys.readouterr().out
    for path in bad_folder["bad"] + [bad_folder["empty"], bad_folder["non_image"]]:
        assert str(path) in out
    assert ("FAILED: 6 images decode, 3 bad, 1 empty class folders, 0 class folders that lead nowhere, "
            "1 non-image files") in out

    clean = tmp_path / "clean" / "a"
    clean.mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(clean / "0.png")
    assert main(["data", "check", str(clean.parent)]) == 0
    assert ": ok: 1 images decode" in capsys.readouterr().out

    assert main(["data", "check", str(tmp_path / "missing")]) == 2
    assert "is not an existing directory" in capsys.readouterr().err


def test_data_check_records_in_the_index_what_start_up_cannot_see(tmp_path, capsys, cut_jpeg):
    """A pixel-truncated JPEG passes the start-up header read; after `data check` the next start names it."""
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / "0.png")
    cut = root / "a" / "1.jpg"
    cut.write_bytes(cut_jpeg)
    assert len(ImageFolderDataset(root)) == 2
    assert main(["data", "check", str(root)]) == 1
    assert f"bad image: {cut}" in capsys.readouterr().out
    with pytest.raises(DataError, match="cannot be decoded") as err:
        ImageFolderDataset(root)
    assert str(cut) in str(err.value)
    index = load_index(root)
    assert index.status.tolist() == [DECODED, BAD] and index.header_reads == 0


def test_cli_data_check_on_a_split_root_points_to_each_split(tmp_path, capsys):
    for split in ("train", "test"):
        (tmp_path / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / split / "a" / "0.png")
    assert main(["data", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "looks like a split root (test/, train/" in err
    assert f"fastssl data check {tmp_path / 'train'}" in err and f"fastssl data check {tmp_path / 'test'}" in err
    assert main(["data", "check", str(tmp_path / "train")]) == 0


def test_check_folder_counts_hidden_files(bad_folder):
    root = bad_folder["root"]
    (root / ".DS_Store").write_bytes(b"\0")
    (root / "a" / "._0_rgb.png").write_bytes(b"\0\5\26\7")
    (root / ".ipynb_checkpoints").mkdir()
    report = check.check_folder(root)
    assert report.hidden == 3 and report.non_images == [bad_folder["non_image"]]
    assert report.lines()[-1].endswith("1 non-image files, 3 hidden files/folders ignored (names starting with '.')")


def test_cli_data_check_lists_links_that_lead_to_no_file_and_records_them(tmp_path, capsys, broken_links,
                                                                          broken_link_reasons):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "a" / "0.png")
    links = broken_links(root / "a")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    for link, why in zip(links, broken_link_reasons):
        assert f"bad image: {link}: {why}\n" in out
    assert (f"{root}: FAILED: 1 images decode, 3 bad, 0 empty class folders, 0 class folders that lead nowhere, "
            "0 non-image files") in out
    index = load_index(root)
    assert index.header_reads == 0 and index.status.tolist() == [DECODED, BAD, BAD, BAD]
    assert index.bad() == list(zip([1, 2, 3], broken_link_reasons))


def test_cli_data_check_lists_class_folder_links_that_lead_nowhere(broken_class_links, capsys):
    """Each one, with what is wrong, among the findings; the other classes are still checked."""
    train, whys = broken_class_links["train"], broken_class_links["whys"]
    assert main(["data", "check", str(train)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        *(f"class folder that leads nowhere: {train / name}: {why}" for name, why in whys.items()),
        f"{train}: FAILED: 2 images decode, 0 bad, 0 empty class folders, {len(whys)} class folders that lead "
        "nowhere, 0 non-image files, 0 hidden files/folders ignored (names starting with '.')"]
    assert not index_path(train).exists()   # no index of a folder that no run can read
