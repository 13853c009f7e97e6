"""data.dataset=images: unlabelled image files in a folder nested to any depth, or named by a .txt list.

What is listed is checked against independent references (an os.walk with its own loop guard, PIL's
sizes and decodes), bad files against the ImageFolder reader's policy, and every backend's batch against
the pixels PIL gives.
"""
import importlib.util
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastssl.cli import main
from fastssl.config import ConfigError, load_config
from fastssl.loaders.augment import IMAGENET_MEAN, IMAGENET_STD
from fastssl.loaders.datasets import DataError, ImageFolderDataset, ImagesDataset, build_dataset
from fastssl.loaders.datasets.files import EXTENSIONS
from fastssl.loaders.datasets import index as index_mod
from fastssl.loaders.datasets.index import DECODED, index_path, load_index
from fastssl.loaders.factory import build_train_loader
from fastssl.loaders.settings import AugmentConfig, DataConfig, LoadSettings, LoaderConfig

S = 32                   # the views' side
W, H = 48, 40            # 6:5, inside the crop's (3/4, 4/3) ratio range: a crop of scale 1 is the whole image
TOLERANCE = 2.0          # mean absolute difference in 0..255 levels: resampling filters and JPEG decoders differ
# The nested tree's image files and their modes; hidden, non-image and link-loop entries come besides.
TREE = {"top.jpg": "RGB", "a/one.png": "L", "a/b/two.jpg": "RGB", "a/b/c/three.png": "RGBA",
        "a/b/c/four.JPEG": "RGB", "a-x/five.png": "RGB"}
# What the images reader lists, by hand: code-point order of the relative paths ('-' < '/' < letters).
LISTED = ["a-x/five.png", "a/alias.jpg", "a/b/c/four.JPEG", "a/b/c/three.png", "a/b/two.jpg", "a/one.png",
          "linked/six.png", "top.jpg"]


def picture(i: int, mode: str = "RGB", width: int = W, height: int = H) -> Image.Image:
    """Image number i: smooth ramps (so resampling filters agree) offset by i (so images differ)."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[..., 0] = (np.linspace(0, 200, width)[None, :] + 5 * i) % 256
    rgb[..., 1] = (np.linspace(0, 200, height)[:, None] + 11 * i) % 256
    rgb[: height // 2, : width // 2, 2] = 255 - 9 * i
    return Image.fromarray(rgb).convert(mode)


def save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """data/: images at four depths (each its own size), a folder linked from outside, a file link, hidden
    files and folders, non-image files, an empty folder and two links back up the tree (a loop)."""
    root = tmp_path / "data"
    for i, (name, mode) in enumerate(TREE.items()):
        save(root / name, picture(i, mode, W + i, H + i))
    save(tmp_path / "outside" / "six.png", picture(6))
    os.symlink(tmp_path / "outside", root / "linked")
    os.symlink("../top.jpg", root / "a" / "alias.jpg")
    for hidden in (".hidden.jpg", ".cache/seven.jpg", "a/._one.jpg"):
        save(root / hidden, picture(7))
    (root / "a" / "notes.txt").write_text("not an image\n")
    (root / "a" / "b" / "meta.json").write_text("{}\n")
    (root / "empty").mkdir()
    os.symlink("../..", root / "a" / "b" / "c" / "up")          # -> a: a loop
    os.symlink(root, root / "a" / "b" / "root")                 # -> the root: a loop
    return root


def walked(root: Path) -> list[str]:
    """The reference listing: os.walk through links, each real folder entered once (by realpath), hidden
    names and non-image extensions left out, relative paths sorted."""
    seen, found = {os.path.realpath(root)}, []
    for folder, dirs, files in os.walk(root, followlinks=True):
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(folder, d))
            if not d.startswith(".") and real not in seen:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        rel = os.path.relpath(folder, root)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in EXTENSIONS]
    return sorted(found)


def pil_sizes(paths) -> list[list[int]]:
    return [[Image.open(p).height, Image.open(p).width] for p in paths]


def pil_rgb(path, size: int | None = None) -> np.ndarray:
    """PIL's own decode: Image.open + convert("RGB"), bilinear-resized to size x size where given."""
    image = Image.open(path).convert("RGB")
    return np.asarray(image if size is None else image.resize((size, size), Image.BILINEAR))


# -- listing ---------------------------------------------------------------------------------------------

def test_a_nested_folder_lists_every_image_at_any_depth_once_in_code_point_order(tree):
    ds = ImagesDataset(tree)
    assert ds.index.files == LISTED == walked(tree)
    assert [str(p) for p in ds.paths] == [str(tree / f) for f in LISTED]
    assert ds.sizes.tolist() == pil_sizes(ds.paths)
    assert ds.sizes[LISTED.index("a/b/c/four.JPEG")].tolist() == [H + 4, W + 4]
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [0] * 8
    assert ds.classes == [] and ds.labelled is False and ImageFolderDataset.labelled is True
    assert ds.skipped == [] and len(ds) == 8


def test_pixels_are_pils_and_to_array_resizes_as_pil_does(tree):
    ds = ImagesDataset(tree)
    for i, path in enumerate(ds.paths):
        assert np.array_equal(np.asarray(ds.load_pil(i)), pil_rgb(path))
    assert np.array_equal(ds.to_array(S), np.stack([pil_rgb(p, S) for p in ds.paths]))
    assert (ds.index.status == DECODED).all()               # recorded by the decode pass


def test_a_list_file_names_relative_and_absolute_paths_with_blank_and_comment_lines(tree, tmp_path):
    lists = tmp_path / "lists"
    save(lists / "sub" / "local.png", picture(9, "RGB", 30, 31))
    absolute = str(tree / "a" / "b" / "two.jpg")
    (lists / "set.txt").write_text(f"# a training subset\n../data/top.jpg\n\n   ../data/a/one.png  \n{absolute}\n"
                                   "  # indented comment\nsub/local.png\n")
    ds = ImagesDataset(lists / "set.txt")
    names = sorted(["../data/top.jpg", "../data/a/one.png", absolute, "sub/local.png"])
    assert ds.index.files == names and ds.root == lists and ds.source == lists / "set.txt"
    assert [str(p) for p in ds.paths] == [os.path.join(lists, n) for n in names]
    assert ds.sizes.tolist() == pil_sizes(ds.paths) and ds.labels.tolist() == [0] * 4
    assert np.array_equal(ds.to_array(S), np.stack([pil_rgb(p, S) for p in ds.paths]))
    assert index_path(lists / "set.txt", "list").is_file()


def test_list_file_rules(tmp_path):
    save(tmp_path / "x.png", picture(0))
    listed = tmp_path / "l.txt"
    listed.write_text("x.png\n# x.png\n\nx.png\n")
    with pytest.raises(DataError, match=r"line 4 lists 'x.png' again \(first on line 1\)"):
        ImagesDataset(listed)
    listed.write_text("# nothing\n\n")
    with pytest.raises(DataError) as info:
        ImagesDataset(listed)
    assert str(info.value) == (f"images list {str(listed)!r}: holds no image files (one path per line; blank lines "
                               "and lines starting with '#' are skipped)")


def test_an_empty_folder_names_the_path_and_the_rule(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    save(tmp_path / "d" / ".hidden.png", picture(0))
    (tmp_path / "d" / "e" / "notes.txt").write_text("x")
    with pytest.raises(DataError) as info:
        ImagesDataset(tmp_path / "d")
    assert str(info.value) == (f"images folder {str(tmp_path / 'd')!r}: holds no image files ({' '.join(EXTENSIONS)},"
                               " searched at any depth; names starting with '.' are skipped)")


def test_a_folder_that_cannot_be_listed_is_named_not_passed_over(tree, monkeypatch):
    """As root (the test machine) permissions do not bind, so scandir is made to refuse one folder."""
    scandir, refused = os.scandir, str(tree / "a" / "b")

    def refuse(path):
        if str(path) == refused:
            raise PermissionError(13, "Permission denied", refused)
        return scandir(path)
    monkeypatch.setattr(os, "scandir", refuse)
    with pytest.raises(DataError) as info:
        ImagesDataset(tree)
    assert str(info.value) == (f"images folder {refused!r}: cannot be listed "
                               f"(PermissionError: [Errno 13] Permission denied: {refused!r})")


def test_a_path_that_is_neither_folder_nor_list_is_named(tmp_path):
    for path in (tmp_path / "missing", save(tmp_path / "x.png", picture(0))):
        with pytest.raises(DataError, match=f"data.path {str(path)!r}: must be an existing directory"):
            ImagesDataset(path)


# -- bad files --------------------------------------------------------------------------------------------

@pytest.fixture
def bad_tree(tmp_path, cut_jpeg) -> dict:
    """Good files at three depths, a truncated JPEG (its header parses), a zero-byte PNG and a text file
    named .jpg. In code-point order: g0, m/g1, m/n/cut, m/n/g2, m/text, z/g3, zero."""
    root = tmp_path / "bad"
    good = [save(root / n, picture(i)) for i, n in enumerate(["g0.png", "m/g1.jpg", "m/n/g2.png", "z/g3.png"])]
    (root / "m" / "n" / "cut.jpg").write_bytes(cut_jpeg)
    (root / "zero.png").write_bytes(b"")
    (root / "m" / "text.jpg").write_text("hello, not an image\n")
    return {"root": root, "good": good, "cut": root / "m/n/cut.jpg",
            "header_bad": [root / "m/text.jpg", root / "zero.png"]}


def test_raise_names_the_first_bad_file_known_from_its_header(bad_tree):
    with pytest.raises(DataError) as info:
        ImagesDataset(bad_tree["root"])
    message = str(info.value)
    assert message.startswith(f"image file {str(bad_tree['header_bad'][0])!r}: cannot be decoded "
                              "(UnidentifiedImageError")
    assert f"1 more bad files in {str(bad_tree['root'])!r}" in message
    assert f"`fastssl data check --images {bad_tree['root']}` lists them all" in message and "\n" not in message


def test_raise_names_a_file_only_a_decode_finds(bad_tree):
    for bad in bad_tree["header_bad"]:
        bad.unlink()
    ds = ImagesDataset(bad_tree["root"])
    assert len(ds) == 5 and ds.sizes[2].tolist() == [64, 64]      # the cut JPEG's header is whole
    with pytest.raises(DataError, match=f"image file {str(bad_tree['cut'])!r}: cannot be decoded"):
        ds.to_array(S)
    with pytest.raises(DataError, match=f"image file {str(bad_tree['cut'])!r}"):
        ImagesDataset(bad_tree["root"])                           # recorded: named at the next start


def test_skip_drops_counts_substitutes_and_records(bad_tree, caplog):
    root, good, cut = bad_tree["root"], bad_tree["good"], bad_tree["cut"]
    with caplog.at_level(logging.WARNING):
        ds = ImagesDataset(root, on_error="skip")
    assert f"images {root}: skipped 2 file(s)" in caplog.text
    assert [p for p, _ in ds.skipped] == bad_tree["header_bad"]
    assert [str(p) for p in ds.paths] == [str(p) for p in (good[0], good[1], cut, good[2], good[3])]
    image, served = ds.load_usable(2)                              # the cut JPEG: the next good file instead
    assert served == 3 and np.array_equal(np.asarray(image), pil_rgb(good[2]))
    assert np.array_equal(np.asarray(ds.load_usable(4)[0]), pil_rgb(good[3])) and ds.load_usable(4)[1] == 4
    pixels = ds.to_array(S)                                        # decodes, drops the cut JPEG
    assert np.array_equal(pixels, np.stack([pil_rgb(p, S) for p in good]))
    assert [str(p) for p in ds.paths] == [str(p) for p in good] and len(ds.skipped) == 3 and len(ds) == 4
    again = ImagesDataset(root, on_error="skip")
    assert again.index.header_reads == 0 and len(again) == 4
    assert sorted(str(p) for p, _ in again.skipped) == sorted(str(p) for p in [cut, *bad_tree["header_bad"]])


def test_skip_with_no_good_file_left_is_an_error(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError) as info:
        ImagesDataset(tmp_path / "a", on_error="skip")
    assert str(info.value) == (f"images {str(tmp_path / 'a')!r}: none of its files can be decoded "
                               "(see the warning above)")


def test_a_listed_path_that_does_not_exist_is_a_bad_file(tmp_path):
    save(tmp_path / "x.png", picture(0))
    (tmp_path / "l.txt").write_text("x.png\nmissing.jpg\n")
    with pytest.raises(DataError, match=f"image file {str(tmp_path / 'missing.jpg')!r}: cannot be decoded "
                                        r"\(FileNotFoundError"):
        ImagesDataset(tmp_path / "l.txt")
    ds = ImagesDataset(tmp_path / "l.txt", on_error="skip")
    assert [p for p, _ in ds.skipped] == [tmp_path / "missing.jpg"] and list(ds.paths) == [tmp_path / "x.png"]
    save(tmp_path / "missing.jpg", picture(1))                    # it appears: read, and served
    again = ImagesDataset(tmp_path / "l.txt")
    assert again.index.header_reads == 1 and len(again) == 2 and again.skipped == []


# -- the index ---------------------------------------------------------------------------------------------

def test_a_second_start_reads_no_header_and_an_added_file_is_read_alone(tree):
    assert ImagesDataset(tree).index.header_reads == 8
    assert ImagesDataset(tree).index.header_reads == 0
    save(tree / "a" / "b" / "c" / "new.png", picture(8, "RGB", 21, 13))
    (tree / "a" / "one.png").unlink()
    ds = ImagesDataset(tree)
    expected = sorted([f for f in LISTED if f != "a/one.png"] + ["a/b/c/new.png"])
    assert ds.index.header_reads == 1 and ds.index.files == expected == walked(tree)
    assert ds.sizes.tolist() == pil_sizes(ds.paths) and ds.sizes[expected.index("a/b/c/new.png")].tolist() == [13, 21]


def test_parallel_listing_and_stat_equal_the_serial_ones(tree, tmp_path, monkeypatch):
    """Folders (nested) and list-file stats spread over processes give the listing one process gives."""
    (tmp_path / "all.txt").write_text("".join(f"data/{f}\n" for f in LISTED) + "data/missing.png\n")
    serial = [index_mod.list_nested(tree), index_mod.list_file(tmp_path / "all.txt")]
    monkeypatch.setattr(index_mod, "PARALLEL_FOLDERS", 2)
    monkeypatch.setattr(index_mod, "PARALLEL_MIN", 2)
    monkeypatch.setattr(index_mod, "HEADER_CHUNK", 3)
    parallel = [index_mod.list_nested(tree), index_mod.list_file(tmp_path / "all.txt")]
    for one, many in zip(serial, parallel):
        assert one.files == many.files and one.classes == many.classes == []
        for name in ("labels", "nbytes", "mtime_ns"):
            assert np.array_equal(getattr(one, name), getattr(many, name))
    listed = parallel[1]
    assert listed.nbytes[listed.files.index("data/missing.png")] == index_mod.LEADS_NOWHERE
    assert listed.nbytes[listed.files.index("data/top.jpg")] == (tree / "top.jpg").stat().st_size


def test_one_folder_read_as_images_and_as_classes_has_two_indexes_neither_read_as_the_other(tmp_path, caplog):
    root = tmp_path / "d"
    for i, name in enumerate(["c0/x.png", "c0/y.png", "c1/z.png"]):
        save(root / name, picture(i))
    assert ImagesDataset(root).index.header_reads == 3
    folder = ImageFolderDataset(root)
    assert folder.index.header_reads == 3 and folder.labels.tolist() == [0, 0, 1]
    nested, classes = index_path(root, "nested"), index_path(root)
    assert nested != classes and nested.is_file() and classes.is_file() and "-nested-" in nested.name
    assert index_path(root, "list") not in (nested, classes)
    shutil.copy(nested, classes)                                  # a nested index where the classes one belongs
    with caplog.at_level(logging.WARNING):
        again = load_index(root)
    assert "written for another version, path or kind of listing" in caplog.text
    assert again.header_reads == 3 and again.classes == ["c0", "c1"]


# -- backends ----------------------------------------------------------------------------------------------

@pytest.fixture
def flat_tree(tmp_path) -> ImagesDataset:
    """Eight W x H images in modes JPEG and PNG at three depths: the backends' batch of the whole set."""
    root = tmp_path / "frames"
    names = ["0.jpg", "s/1.png", "s/2.jpg", "s/t/3.png", "s/t/4.jpg", "u/5.png", "u/6.jpg", "u/v/w/7.png"]
    modes = ["RGB", "L", "RGB", "RGBA", "L", "RGB", "RGB", "RGB"]
    for i, (name, mode) in enumerate(zip(names, modes)):
        save(root / name, picture(i, mode))
    return ImagesDataset(root)


def settings(ds: ImagesDataset, backend: str, beton: Path | None = None) -> LoadSettings:
    """One batch of the whole set, two un-augmented views (the whole image resized to S x S)."""
    plain = AugmentConfig(crop_scale_min=1.0, crop_scale_max=1.0, flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    loader = LoaderConfig(backend=backend, batch_size=len(ds), workers=1 if backend in ("dali", "ffcv") else 0,
                          beton=None if beton is None else str(beton))
    return LoadSettings(DataConfig(dataset="images", path=str(ds.source), image_size=S), loader, plain, seed=0)


def assert_batch_shows_the_images(batch, ds: ImagesDataset) -> None:
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    assert sorted(batch.index.tolist()) == list(range(len(ds)))
    assert batch.labels.tolist() == [0] * len(ds)
    assert len(batch.views) == 2
    for view in batch.views:
        assert view.shape == (len(ds), 3, S, S) and view.dtype == torch.float32
        for row, i in enumerate(batch.index.tolist()):
            pixels = (view[row].float() * std + mean) * 255
            reference = torch.from_numpy(pil_rgb(ds.paths[i], S).copy()).permute(2, 0, 1).float()
            assert (pixels - reference).abs().mean() < TOLERANCE, ds.paths[i]


@pytest.mark.parametrize("backend", ["tensor", "torchvision"])
def test_tensor_and_torchvision_backends_load_the_images(flat_tree, backend):
    batch = next(iter(build_train_loader(settings(flat_tree, backend), flat_tree, "cpu")))
    assert_batch_shows_the_images(batch, flat_tree)


@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="NVIDIA DALI is not installed")
def test_dali_cpu_backend_loads_the_images(flat_tree):
    batch = next(iter(build_train_loader(settings(flat_tree, "dali"), flat_tree, "cpu")))
    assert_batch_shows_the_images(batch, flat_tree)


def test_ffcv_convert_writes_the_images_with_label_zero_and_the_backend_reads_them(flat_tree, tmp_path):
    pytest.importorskip("fastssl.loaders.ffcv_imports", reason="ffcv not installed (pip install -e '.[ffcv]')")
    from fastssl.loaders.ffcv_backend import BetonFile

    dst = tmp_path / "frames.beton"
    assert main(["data", "convert", "--src", f"images:{flat_tree.source}", "--dst", str(dst), "--raw",
                 "--workers", "1"]) == 0
    stored = BetonFile(dst)
    assert stored.labels.tolist() == [0] * len(flat_tree)
    for i, (p, s, h, w) in enumerate(zip(stored.ptr, stored.size, stored.height, stored.width)):
        assert np.array_equal(np.asarray(stored.file[p:p + s]).reshape(h, w, 3), pil_rgb(flat_tree.paths[i]))
    batch = next(iter(build_train_loader(settings(flat_tree, "ffcv", dst), flat_tree, "cpu")))
    assert_batch_shows_the_images(batch, flat_tree)


# -- config, build_dataset, the CLI --------------------------------------------------------------------------

def test_config_needs_a_folder_or_a_txt_list(tmp_path):
    rule = ("must be an existing directory (image files at any depth) or .txt file (one image path per line) "
            "for data.dataset=images")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "list.csv").write_text("x.png\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.dataset=images"])
    assert str(info.value) == "data.path=None: is required for data.dataset=images"
    for bad in ("missing", "fifo", "list.csv"):
        with pytest.raises(ConfigError) as info:
            load_config(None, ["data.dataset=images", f"data.path={tmp_path / bad}"])
        assert str(info.value) == f"data.path={str(tmp_path / bad)!r}: {rule}"
    (tmp_path / "list.txt").write_text("x.png\n")
    for good in (tmp_path, tmp_path / "list.txt"):
        assert load_config(None, ["data.dataset=images", f"data.path={good}"]).data.path == str(good)


def test_build_dataset_has_a_train_split_only(tree):
    cfg = DataConfig(dataset="images", path=str(tree), on_error="skip")
    train = build_dataset(cfg, "train")
    assert isinstance(train, ImagesDataset) and train.on_error == "skip" and train.index.files == LISTED
    with pytest.raises(DataError) as info:
        build_dataset(cfg, "test")
    assert str(info.value) == ("data.dataset=images is unlabelled: it has no test split; the kNN monitor takes a "
                               "labelled ImageFolder as knn.data=PATH, fastssl eval and features as --set "
                               "data.dataset=imagefolder --set data.path=PATH")


def test_cli_index_and_check_read_a_nested_folder_and_a_list(bad_tree, capsys):
    root = bad_tree["root"]
    assert main(["data", "index", "--images", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"{root}: 7 files (unlabelled), 7 headers read" in out and "2 known bad" in out
    assert str(index_path(root, "nested")) in out
    for bad in bad_tree["header_bad"]:
        assert f"bad image: {bad}: " in out
    assert main(["data", "check", "--images", str(root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split(": ")[1] for line in lines if line.startswith("bad image")) == \
        sorted(str(p) for p in [bad_tree["cut"], *bad_tree["header_bad"]])
    assert lines[-1] == (f"{root}: FAILED: 4 images decode, 3 bad, 0 non-image files, "
                         "0 hidden files/folders ignored (names starting with '.')")
    assert ImagesDataset(root, on_error="skip").index.header_reads == 0   # the check recorded the cut JPEG
    listed = root / "good.txt"
    listed.write_text("\n".join(str(p.relative_to(root)) for p in bad_tree["good"]) + "\n")
    assert main(["data", "check", "--images", str(listed)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{listed}: ok: 4 images decode, 0 bad")
    assert main(["data", "index", "--images", str(root / "nope")]) == 2
    assert "must be an existing directory (image files at any depth)" in capsys.readouterr().err


def test_cli_check_counts_hidden_and_non_image_files_of_a_nested_folder(tree, capsys):
    assert main(["data", "check", "--images", str(tree)]) == 0
    out = capsys.readouterr().out
    for name in ("a/notes.txt", "a/b/meta.json"):
        assert f"not an image (ignored by the loaders): {tree / name}\n" in out
    assert out.splitlines()[-1] == (f"{tree}: ok: 8 images decode, 0 bad, 2 non-image files, "
                                    "3 hidden files/folders ignored (names starting with '.')")
