"""Finding photos and decoding them in parallel (clibd_cli.photos)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, encoded, invoke, jpeg, png_header_only, write_table
from PIL import Image

import clibd_cli.photos as photos_module
from clibd_cli.errors import InputError
from clibd_cli.photos import (
    IMAGE_EXTENSIONS,
    DecodedBatch,
    Photo,
    PhotoProblem,
    collect_photos,
    iter_preprocessed,
)
from clibd_cli.preprocess import ImagePreprocessing, preprocess_image

SMALL = ImagePreprocessing(size=32, resize=40)
SMALL_RAW = ImagePreprocessing(size=32, resize=40, mean=None, std=None)
EMPTY_TAXONOMY = {"order": "", "family": "", "genus": "", "species": ""}


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def ids(photos: list[Photo]) -> list[str]:
    return [photo.id for photo in photos]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """photos/ with nested folders, every image extension in odd cases, non-images and hidden entries."""
    root = tmp_path / "photos"
    for relative in ("a.jpg", "B.PNG", "z.gif", "y.Bmp", "sp1/c.tif", "sp1/deep/d.jpeg", "sp1/deep/f.TIFF",
                     "sp2/e.webp", "notes.txt", "sp2/table.csv", "sp2/noext", ".hidden.jpg", ".cache/x.jpg",
                     "sp1/.thumbs/t.jpg"):
        touch(root / relative)
    return root


# ---------------------------------------------------------------------------------------------
# Files, folders and patterns


def test_image_extensions_are_the_documented_set():
    pillow = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif", ".avif"}
    assert pillow | {".heic", ".heif", ".hif"} <= set(IMAGE_EXTENSIONS)
    assert {".cr2", ".cr3", ".nef", ".dng", ".arw", ".orf", ".rw2", ".raf"} <= set(IMAGE_EXTENSIONS)
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)


def test_folder_is_walked_recursively_sorted_with_relative_ids(tree):
    photos, problems = collect_photos([tree])
    assert problems == []
    assert ids(photos) == ["B.PNG", "a.jpg", "sp1/c.tif", "sp1/deep/d.jpeg", "sp1/deep/f.TIFF", "sp2/e.webp",
                           "y.Bmp", "z.gif"]
    for photo in photos:
        assert photo.path == tree / photo.id
        assert photo.group == photo.id
        assert photo.taxonomy == EMPTY_TAXONOMY


def test_folder_order_does_not_depend_on_listing_order(tree, monkeypatch):
    expected = ids(collect_photos([tree])[0])
    real_scandir = os.scandir

    class Reversed:
        def __init__(self, path):
            self._scan = real_scandir(path)

        def __enter__(self):
            return reversed(list(self._scan))

        def __exit__(self, *exc):
            self._scan.close()

    monkeypatch.setattr(os, "scandir", Reversed)
    assert ids(collect_photos([tree])[0]) == expected


def test_symlink_loops_are_not_followed_forever(tree):
    expected = ids(collect_photos([tree])[0])
    (tree / "sp1" / "deep" / "up").symlink_to(tree, target_is_directory=True)
    photos, problems = collect_photos([tree])
    assert ids(photos) == expected and problems == []


def test_a_file_given_directly_is_kept_whatever_its_extension(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    photos, problems = collect_photos(["photos/notes.txt", Path("photos/sp1/c.tif"), "./photos/a.jpg"])
    assert problems == []
    assert ids(photos) == ["photos/notes.txt", "photos/sp1/c.tif", "photos/a.jpg"]
    assert photos[0].path == Path("photos/notes.txt")


def test_glob_patterns_are_expanded_sorted_and_keep_only_photos(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    photos, _ = collect_photos(["photos/**/*.jp*g"])
    assert ids(photos) == ["photos/a.jpg", "photos/sp1/deep/d.jpeg"]  # hidden entries are not matched
    photos, _ = collect_photos(["photos/sp2/*"])  # a CSV and an extension-less file are not photos
    assert ids(photos) == ["photos/sp2/e.webp"]
    photos, _ = collect_photos(["photos/sp[12]"])  # matched folders are walked like folders given
    assert ids(photos) == ["c.tif", "deep/d.jpeg", "deep/f.TIFF", "e.webp"]
    assert photos[0].path == Path("photos/sp1/c.tif")


def test_missing_path_and_empty_patterns_raise_naming_the_argument(tree):
    with pytest.raises(InputError, match=r"nowhere\.jpg: no such file or folder"):
        collect_photos([tree, tree / "nowhere.jpg"])
    with pytest.raises(InputError, match=r"\*\.heic: the pattern matches no files"):
        collect_photos([str(tree / "*.heic")])
    with pytest.raises(InputError, match=r"\*\.txt: the pattern matches 1 file\(s\) but none is a photo"):
        collect_photos([str(tree / "*.txt")])


def test_the_same_file_reached_twice_is_listed_once(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    photos, _ = collect_photos(["photos", "photos/a.jpg", "photos/sp1/../a.jpg", "photos/*.gif"])
    assert ids(photos).count("a.jpg") == 1 and len(photos) == 8
    assert "photos/a.jpg" not in ids(photos) and "photos/z.gif" not in ids(photos)


def test_different_files_with_the_same_id_are_both_kept(tmp_path, monkeypatch):
    touch(tmp_path / "day1" / "IMG_0001.jpg")
    touch(tmp_path / "day2" / "IMG_0001.jpg")
    monkeypatch.chdir(tmp_path)
    photos, _ = collect_photos(["day1", "day2"])
    assert ids(photos) == ["IMG_0001.jpg", "day2/IMG_0001.jpg"]
    assert [p.path for p in photos] == [Path("day1/IMG_0001.jpg"), Path("day2/IMG_0001.jpg")]


def test_group_by_folder(tree, monkeypatch):
    monkeypatch.chdir(tree.parent)
    photos, _ = collect_photos(["photos", "photos/sp2/table.csv"], group_by="folder")
    groups = {photo.id: photo.group for photo in photos}
    assert groups == {"B.PNG": "photos", "a.jpg": "photos", "sp1/c.tif": "sp1", "sp1/deep/d.jpeg": "sp1/deep",
                      "sp1/deep/f.TIFF": "sp1/deep", "sp2/e.webp": "sp2", "y.Bmp": "photos", "z.gif": "photos",
                      "photos/sp2/table.csv": "photos/sp2"}


def test_group_by_a_column_without_manifest_is_refused(tree):
    with pytest.raises(InputError, match=r"'site'.*manifest"):
        collect_photos([tree], group_by="site")


def test_photo_defaults():
    photo = Photo("x", Path("x.jpg"))
    assert photo.group == "x" and photo.taxonomy == EMPTY_TAXONOMY
    assert Photo("x", Path("x.jpg"), "g").group == "g"
    assert hash(photo) == hash(Photo("x", Path("x.jpg")))  # usable in sets despite the taxonomy dict


# ---------------------------------------------------------------------------------------------
# Unreadable folders


def test_unreadable_folder_becomes_a_problem_and_the_walk_goes_on(tree, monkeypatch):
    locked = tree / "sp1"
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    photos, problems = collect_photos([tree])
    assert ids(photos) == ["B.PNG", "a.jpg", "sp2/e.webp", "y.Bmp", "z.gif"]
    assert len(problems) == 1
    assert problems[0].id == "sp1" and problems[0].path == str(locked)
    assert problems[0].reason.startswith("cannot read folder: ") and "Permission denied" in problems[0].reason


def test_unreadable_top_folder_is_named_as_given(tree, monkeypatch):
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == tree:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    photos, problems = collect_photos([tree])
    assert photos == [] and [p.id for p in problems] == [tree.as_posix()]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_by_permissions(tree):
    locked = tree / "sp1"
    locked.chmod(0)
    try:
        photos, problems = collect_photos([tree])
    finally:
        locked.chmod(0o755)
    assert "sp1/c.tif" not in ids(photos) and "a.jpg" in ids(photos)
    assert [p.id for p in problems] == ["sp1"] and problems[0].reason.startswith("cannot read folder:")


# ---------------------------------------------------------------------------------------------
# Manifests


MANIFEST_HEADER = ["processid", "image_file", "order", "family", "genus", "species", "site"]


@pytest.mark.parametrize("name,delimiter", [("manifest.csv", ","), ("manifest.tsv", "\t"), ("listing.txt", "\t")])
def test_manifest_ids_paths_taxonomy_and_groups(tmp_path, name, delimiter):
    touch(tmp_path / "imgs" / "a.jpg")
    outside = touch(tmp_path.parent / f"{tmp_path.name}-elsewhere" / "b.jpg")
    manifest = write_table(tmp_path / name, MANIFEST_HEADER, [
        ["P1", "imgs/a.jpg", "Diptera", "Cecidomyiidae", "", "Lestodiplosis sp. 1", "north"],
        ["P2", str(outside), "Coleoptera", "", "", "", ""],
        ["P3", "imgs/missing.jpg", "not_classified", "", "", "", "south"],  # missing: an error row later
    ], delimiter)
    photos, problems = collect_photos([], manifest=manifest, group_by="site")
    assert problems == []
    assert ids(photos) == ["P1", "P2", "P3"]
    assert [p.path for p in photos] == [tmp_path / "imgs/a.jpg", outside, tmp_path / "imgs/missing.jpg"]
    assert photos[0].taxonomy == {"order": "Diptera", "family": "Cecidomyiidae", "genus": "Lestodiplosis",
                                  "species": "Lestodiplosis sp. 1"}
    assert photos[2].taxonomy == EMPTY_TAXONOMY
    assert [p.group for p in photos] == ["north", "P2", "south"]  # an empty group cell: the photo alone


def test_manifest_without_id_column_uses_the_path_and_groups_by_folder(tmp_path, tree):
    manifest = write_table(tree / "list.csv", ["filename", "note"],
                           [["sp1/c.tif", "x"], ["a.jpg", "y"], ["", "no file"]], ",")
    photos, problems = collect_photos([], manifest=manifest, group_by="folder")
    assert ids(photos) == ["sp1/c.tif", "a.jpg"]
    assert [p.group for p in photos] == ["sp1", "a.jpg"]
    assert [(p.id, p.path) for p in problems] == [("list.csv:4", "")]
    assert "line 4 names no image file" in problems[0].reason


def test_bioscan1m_manifest_resolves_part_chunk_folders(tmp_path):
    touch(tmp_path / "part3" / "4965392.jpg")
    touch(tmp_path / "part12" / "4858715.jpg")
    touch(tmp_path / "4286925.jpg")  # found next to the manifest: taken as is
    manifest = write_table(tmp_path / "BIOSCAN_Insect_Dataset_metadata.tsv",
                           ["sampleid", "processid", "order", "image_file", "chunk_number"], [
                               ["S1", "PLAEZ172-21", "Coleoptera", "4965392.jpg", "3"],
                               ["S2", "PLYDB118-20", "Coleoptera", "4858715.jpg", "12.0"],  # pandas float
                               ["S3", "PLECF2633-20", "Coleoptera", "4286925.jpg", "5"],
                               ["S4", "PLEDF726-20", "Diptera", "4483826.jpg", "7"],  # not unpacked
                           ], "\t")
    photos, _ = collect_photos([], manifest=manifest)
    assert ids(photos) == ["PLAEZ172-21", "PLYDB118-20", "PLECF2633-20", "PLEDF726-20"]  # processid first
    assert [p.path for p in photos] == [tmp_path / "part3/4965392.jpg", tmp_path / "part12/4858715.jpg",
                                        tmp_path / "4286925.jpg", tmp_path / "part7/4483826.jpg"]
    assert photos[3].taxonomy["order"] == "Diptera"


def test_manifest_without_path_column_or_group_column_is_refused(tmp_path):
    no_path = write_table(tmp_path / "m.csv", ["processid", "species"], [["P1", "x"]], ",")
    with pytest.raises(InputError, match=r"m\.csv: no image file column .*columns are: processid, species"):
        collect_photos([], manifest=no_path)
    touch(tmp_path / "a.jpg")
    ok = write_table(tmp_path / "ok.csv", ["id", "path", "site"], [["P1", "a.jpg", "n"]], ",")
    with pytest.raises(InputError, match=r"ok\.csv: no column 'plot' .*columns are: id, path, site"):
        collect_photos([], manifest=ok, group_by="plot")
    photos, _ = collect_photos([], manifest=ok, group_by="SITE")  # column names are case-insensitive
    assert photos[0].group == "n"


def test_manifest_photos_come_before_other_inputs_and_are_not_repeated(tmp_path, tree):
    manifest = write_table(tree / "m.csv", ["id", "image"], [["SPEC-1", "a.jpg"]], ",")
    photos, _ = collect_photos([tree / "a.jpg", tree / "z.gif"], manifest=manifest)
    assert ids(photos) == ["SPEC-1", (tree / "z.gif").as_posix()]


# ---------------------------------------------------------------------------------------------
# Decoding


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[list[Photo], set[str]]:
    """Good photos in awkward formats and bad ones, listed in a manifest; returns (photos, bad ids)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    rng = np.random.default_rng(0)

    def noise(width: int, height: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))

    rgba = np.zeros((40, 50, 4), dtype=np.uint8)
    rgba[:, :25] = (255, 0, 0, 128)
    truncated = jpeg(noise(120, 90))
    files = {
        "plain.jpg": jpeg(noise(64, 48)),
        "big.jpg": jpeg(noise(400, 300)),  # decoded in draft mode: still equal to preprocess_image
        "truncated.jpg": truncated[: len(truncated) // 2],
        "alpha.png": encoded(Image.fromarray(rgba, "RGBA"), "PNG"),
        "notes.jpg": b"specimen notes, not a photo\n",
        "grey16.tif": encoded(Image.fromarray((rng.integers(0, 65536, (45, 60))).astype(np.uint16)), "TIFF"),
        "cmyk.jpg": jpeg(noise(50, 70).convert("CMYK")),
        "bomb.png": png_header_only(10_000, 10_000),
        "portrait.png": encoded(noise(36, 80), "PNG"),
        "palette.gif": encoded(noise(48, 48).convert("P"), "GIF"),
    }
    for name, data in files.items():
        touch(folder / name, data)
    assert Image.open(folder / "grey16.tif").mode.startswith("I;16")
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    names = ["plain.jpg", "truncated.jpg", "alpha.png", "missing.jpg", "grey16.tif", "notes.jpg", "cmyk.jpg",
             "bomb.png", "big.jpg", "portrait.png", "palette.gif"]
    manifest = write_table(folder / "manifest.csv", ["id", "image_file"],
                           [[f"S{i:02d}", name] for i, name in enumerate(names)], ",")
    photos, problems = collect_photos([], manifest=manifest)
    assert problems == [] and len(photos) == len(names)
    bad = {"truncated.jpg", "missing.jpg", "notes.jpg", "bomb.png"}
    return photos, {photo.id for photo in photos if photo.path.name in bad}


@pytest.mark.parametrize("workers,batch_size,prefetch", [(1, 3, 2), (4, 3, 2), (4, 4, 0), (2, 32, 1)])
def test_iter_preprocessed_decodes_good_photos_and_reports_bad_ones(mixed, workers, batch_size, prefetch):
    photos, bad = mixed
    batches = list(iter_preprocessed(photos, SMALL, batch_size=batch_size, workers=workers, prefetch=prefetch))
    assert all(isinstance(batch, DecodedBatch) for batch in batches)
    assert len(batches) == -(-len(photos) // batch_size)
    for number, batch in enumerate(batches):
        chunk = photos[number * batch_size : (number + 1) * batch_size]
        # Every input photo is in the batch of its position, decoded or not, in input order.
        assert batch.photos == [p for p in chunk if p.id not in bad]
        assert [p for p, _ in batch.errors] == [p for p in chunk if p.id in bad]
        assert batch.pixels.dtype == np.float32 and batch.pixels.shape == (len(batch.photos), 3, 32, 32)
        for photo, pixels in zip(batch.photos, batch.pixels, strict=True):
            np.testing.assert_array_equal(pixels, preprocess_image(photo.path, SMALL))
        for photo, reason in batch.errors:
            assert photo.path.name in reason and "\n" not in reason
    reasons = {photo.path.name: reason for batch in batches for photo, reason in batch.errors}
    assert "no such image file" in reasons["missing.jpg"]
    assert "not an image" in reasons["notes.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert "truncated" in reasons["truncated.jpg"]


def test_the_command_line_makes_the_bomb_warning_an_error_for_its_whole_process():
    """PIL only warns between its pixel limit and twice that.  load_image makes the warning an error per call, but
    on Python 3.11 that filter is process-global and races between decoding threads (the [4-4-0] case above once
    let it print), so a command sets it for its whole process before any thread starts: raised in another thread,
    outside any per-call filter, the warning is then an error."""
    import warnings

    def raised_in_a_thread() -> bool:
        raised = []

        def warn() -> None:
            try:
                warnings.warn("an image over the pixel limit", Image.DecompressionBombWarning, stacklevel=1)
            except Image.DecompressionBombWarning:
                raised.append(True)

        thread = threading.Thread(target=warn)
        thread.start()
        thread.join()
        return bool(raised)

    with pytest.warns(Image.DecompressionBombWarning):  # before any command: a warning only
        assert not raised_in_a_thread()
    assert invoke("match", "--help").exit_code == 0
    assert raised_in_a_thread()


def test_transparent_areas_become_white(mixed):
    photos, _ = mixed
    alpha = [p for p in photos if p.path.name == "alpha.png"]
    (batch,) = iter_preprocessed(alpha, SMALL_RAW, workers=1)
    right_half = batch.pixels[0][:, :, 20:]
    assert (right_half == 1.0).all()  # fully transparent black composited on white
    assert batch.pixels[0][0, :, :8].min() == 1.0 and batch.pixels[0][1, :, :8].max() < 0.6  # pink


def test_max_pixels_is_passed_to_the_decoder(mixed):
    photos, _ = mixed
    big = [p for p in photos if p.path.name == "big.jpg"]
    (batch,) = iter_preprocessed(big, SMALL, max_pixels=100_000)
    assert batch.photos == [] and "decompression bomb" in batch.errors[0][1]
    assert batch.pixels.shape == (0, 3, 32, 32)


def test_no_photos_no_batches_and_bad_arguments_refused():
    assert list(iter_preprocessed([], SMALL)) == []
    for bad in ({"batch_size": 0}, {"prefetch": -1}, {"workers": 0}):
        with pytest.raises(ValueError):
            iter_preprocessed([Photo("x", Path("x.jpg"))], SMALL, **bad)


def test_other_exceptions_propagate(mixed, monkeypatch):
    photos, _ = mixed
    real = photos_module.preprocess_image

    def broken(path, spec, **kwargs):
        if Path(path).name == "cmyk.jpg":
            raise RuntimeError("a bug, not a bad photo")
        return real(path, spec, **kwargs)

    monkeypatch.setattr(photos_module, "preprocess_image", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        list(iter_preprocessed(photos, SMALL, batch_size=2, workers=2))
    assert not [t for t in threading.enumerate() if t.name.startswith("clibd-decode")]


def _counting_decoder(monkeypatch, delay: float = 0.0) -> list[str]:
    calls: list[str] = []
    lock = threading.Lock()

    def fake(path, spec, **kwargs):
        with lock:
            calls.append(Path(path).name)
        time.sleep(delay)
        return np.zeros((3, spec.size, spec.size), np.float32)

    monkeypatch.setattr(photos_module, "preprocess_image", fake)
    return calls


def test_prefetch_decodes_ahead_while_the_consumer_works(monkeypatch):
    calls = _counting_decoder(monkeypatch)
    photos = [Photo(f"p{i}", Path(f"p{i}.jpg")) for i in range(20)]
    batches = iter_preprocessed(photos, SMALL, batch_size=2, workers=2, prefetch=2)
    first = next(batches)
    assert [p.id for p in first.photos] == ["p0", "p1"]
    deadline = time.monotonic() + 5
    while len(calls) < 6 and time.monotonic() < deadline:  # the consumer "runs inference" here
        time.sleep(0.005)
    time.sleep(0.05)
    assert sorted(calls) == sorted(f"p{i}.jpg" for i in range(6))  # two batches ahead, not more
    assert [p.id for p in next(batches).photos] == ["p2", "p3"]
    batches.close()


def test_workers_decode_in_parallel(monkeypatch):
    barrier = threading.Barrier(4, timeout=5)

    def fake(path, spec, **kwargs):
        barrier.wait()  # raises BrokenBarrierError (a bug → propagates) unless 4 decodes run at once
        return np.zeros((3, spec.size, spec.size), np.float32)

    monkeypatch.setattr(photos_module, "preprocess_image", fake)
    photos = [Photo(f"p{i}", Path(f"p{i}.jpg")) for i in range(8)]
    batches = list(iter_preprocessed(photos, SMALL, batch_size=4, workers=4, prefetch=1))
    assert [len(b.photos) for b in batches] == [4, 4]


def test_closing_early_cancels_queued_work_and_joins_the_pool(monkeypatch):
    calls = _counting_decoder(monkeypatch, delay=0.02)
    photos = [Photo(f"p{i}", Path(f"p{i}.jpg")) for i in range(200)]
    batches = iter_preprocessed(photos, SMALL, batch_size=8, workers=2, prefetch=3)
    next(batches)
    started = time.monotonic()
    batches.close()
    assert time.monotonic() - started < 2  # 24 queued photos would take 0.24 s; not waited for
    assert len(calls) < 8 * 4  # queued decodes were cancelled, not run
    assert not [t for t in threading.enumerate() if t.name.startswith("clibd-decode")]
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count


def test_real_bioscan_photos_decode_like_preprocess_image():
    folder = SHARED / "images" / "bioscan1m_imgfilter_subset"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: real BIOSCAN photos exist only in the clibd development setup")
    photos, problems = collect_photos([folder])
    assert problems == [] and len(photos) >= 4 and all(p.id.endswith(".jpg") for p in photos)
    spec = ImagePreprocessing()
    (batch,) = iter_preprocessed(photos[:6], spec, batch_size=6, workers=2)
    assert batch.errors == [] and batch.pixels.shape == (len(batch.photos), 3, 224, 224)
    for photo, pixels in zip(batch.photos, batch.pixels, strict=True):
        np.testing.assert_array_equal(pixels, preprocess_image(photo.path, spec))


def test_photo_problem_fields():
    problem = PhotoProblem("sp1", "/x/sp1", "cannot read folder: denied")
    assert (problem.id, problem.path, problem.reason) == ("sp1", "/x/sp1", "cannot read folder: denied")


def test_module_does_not_import_torch():
    code = "import sys, clibd_cli.photos; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
