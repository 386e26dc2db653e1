"""Every photo a user points at is read or reported: HEIC/HEIF and AVIF beside JPEG/PNG, camera RAW.

A folder from a phone mixes HEIC with JPEG; a field camera may write RAW.  On the bundled demo model a
HEIC (and a RAW DNG) made from a demo JPEG must get the JPEG's call, and a RAW file that cannot be read
must be an error row that says what to install, counted in the summary line, never a silent skip.
"""

from __future__ import annotations

import re
import shutil
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from conftest import invoke, read_rows
from PIL import Image, ImageOps

from clibd_cli.image_formats import RAW_INSTALL
from clibd_cli.photos import collect_photos, has_image_extension
from clibd_cli.preprocess import ImageError, load_image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SOURCE = EXAMPLES / "photos" / "SYN000006.jpg"
CALL = ("status", "rank", "order", "family", "genus", "species", "top_hit_id")

try:
    import rawpy  # noqa: F401

    HAVE_RAWPY = True
except ImportError:
    HAVE_RAWPY = False


def linear_dng(rgb: np.ndarray) -> bytes:
    """A minimal uncompressed LinearRaw DNG (RGB, 16 bit, linear sRGB primaries) holding an 8-bit sRGB image.

    The camera space is linear sRGB (ColorMatrix1 = XYZ→linear sRGB, D65, neutral white balance), so
    LibRaw's default rendering gives back the photo within a couple of grey levels.
    """
    height, width, _ = rgb.shape
    srgb = rgb.astype(np.float64) / 255.0
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    data = np.round(linear * 65535).astype("<u2").tobytes()
    entries: list[tuple[int, int, int, bytes]] = []

    def add(tag: int, kind: int, values) -> None:
        if kind == 2:  # ASCII
            payload = values.encode() + b"\0"
            count = len(payload)
        elif kind in (5, 10):  # (S)RATIONAL
            payload = b"".join(struct.pack("<II" if kind == 5 else "<ii", *v) for v in values)
            count = len(values)
        else:
            payload = struct.pack(f"<{len(values)}{ {1: 'B', 3: 'H', 4: 'I'}[kind] }", *values)
            count = len(values)
        entries.append((tag, kind, count, payload))

    xyz_to_srgb = [3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570]
    add(254, 4, [0])  # NewSubfileType: the main image
    add(256, 4, [width])
    add(257, 4, [height])
    add(258, 3, [16, 16, 16])
    add(259, 3, [1])  # uncompressed
    add(262, 3, [34892])  # LinearRaw
    add(271, 2, "clibd")
    add(272, 2, "test")
    add(273, 4, [0])  # StripOffsets, patched below
    add(274, 3, [1])
    add(277, 3, [3])
    add(278, 4, [height])
    add(279, 4, [len(data)])
    add(284, 3, [1])
    add(50706, 1, [1, 4, 0, 0])  # DNGVersion
    add(50707, 1, [1, 1, 0, 0])
    add(50708, 2, "clibd test camera")
    add(50717, 4, [65535])  # WhiteLevel
    add(50721, 10, [(round(v * 10000), 10000) for v in xyz_to_srgb])  # ColorMatrix1
    add(50728, 5, [(1, 1)] * 3)  # AsShotNeutral
    add(50778, 3, [21])  # CalibrationIlluminant1: D65
    entries.sort()
    table_at = 8
    extra_at = table_at + 2 + 12 * len(entries) + 4
    table, extras = b"", b""
    for tag, kind, count, payload in entries:
        if len(payload) <= 4:
            table += struct.pack("<HHI", tag, kind, count) + payload.ljust(4, b"\0")
        else:
            table += struct.pack("<HHII", tag, kind, count, extra_at + len(extras))
            extras += payload + b"\0" * (len(payload) % 2)
    out = bytearray(b"II*\0" + struct.pack("<IH", table_at, len(entries)) + table + b"\0" * 4 + extras + data)
    strip = [e[0] for e in entries].index(273)
    struct.pack_into("<I", out, table_at + 2 + 12 * strip + 8, extra_at + len(extras))
    return bytes(out)


def write_heic(image: Image.Image, path: Path, **kwargs) -> Path:
    pillow_heif.from_pillow(image).save(path, quality=-1, chroma=444, **kwargs)  # lossless
    return path


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """A phone/camera card: the demo photo as JPEG, HEIC, AVIF and DNG, another one as PNG, a broken CR2, notes."""
    folder = tmp_path_factory.mktemp("card")
    shutil.copy(SOURCE, folder / "SYN000006.jpg")
    photo = Image.open(SOURCE).convert("RGB")
    write_heic(photo, folder / "IMG_0001.HEIC")  # upper case, as iPhones name them
    photo.save(folder / "IMG_0003.avif", quality=100)
    (folder / "IMG_0004.dng").write_bytes(linear_dng(np.asarray(photo)))
    Image.open(EXAMPLES / "photos" / "SYN000031.jpg").save(folder / "SYN000031.png")
    (folder / "IMG_0002.CR2").write_bytes(b"II*\0" + bytes(range(256)) * 8)  # junk after a TIFF magic
    (folder / "notes.txt").write_text("trap 4, 2024-06-01\n")
    return folder


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory) -> Path:
    index = tmp_path_factory.mktemp("demo") / "demo_index"
    result = invoke("build-index", "--barcodes", EXAMPLES / "demo-barcodes.tsv", "--model", EXAMPLES / "demo-model",
                    "-o", index)
    assert result.exit_code == 0, result.output
    return index


def classify(folder: Path, index: Path, out: Path):
    result = invoke("classify", folder, "--model", EXAMPLES / "demo-model", "--index", index, "-o", out)
    assert result.exit_code == 0, result.output
    return {row["query_id"]: row for row in read_rows(out)}, result.stderr


def summary_counts(stderr: str) -> tuple[int, dict[str, int]]:
    """The summary line "N photos on cpu: a assigned, …, e error" as (N, {status: count})."""
    line = next(line for line in stderr.splitlines() if re.match(r"\d+ photos on ", line))
    total = int(line.split()[0])
    counts = {status: int(n) for n, status in re.findall(r"(\d+) (\w+)", line.split(":", 1)[1])}
    return total, counts


def test_image_extensions_are_case_insensitive_and_cover_phones_and_raw():
    for name in ("IMG_0001.HEIC", "a.heif", "b.AVIF", "c.Tif", "d.webp", "e.BMP", "f.CR2", "g.nef", "h.DNG",
                 "i.ARW", "j.orf", "k.RW2", "l.RAF"):
        assert has_image_extension(name), name
    assert not has_image_extension("notes.txt") and not has_image_extension("IMG_0001.HEIC.xmp")


@pytest.mark.parametrize(("name", "tolerance"), [("a.tiff", 0), ("b.WEBP", 0), ("c.bmp", 0), ("d.avif", 3),
                                                ("e.gif", 3), ("f.heif", 0.05)])
def test_every_listed_format_decodes_to_the_photo(tmp_path, name, tolerance):
    photo = Image.open(SOURCE).convert("RGB")
    path = tmp_path / name
    if name.endswith(".heif"):
        write_heic(photo, path)
    else:
        photo.save(path, **({"lossless": True} if name.endswith(".WEBP") else {"quality": 100}))
    decoded = np.asarray(load_image(path), dtype=float)
    assert decoded.shape == (64, 64, 3)
    assert np.abs(decoded - np.asarray(photo, dtype=float)).mean() <= tolerance


def test_collect_lists_every_photo_of_a_mixed_folder(mixed_folder):
    photos, problems = collect_photos([mixed_folder])
    assert [p.id for p in photos] == ["IMG_0001.HEIC", "IMG_0002.CR2", "IMG_0003.avif", "IMG_0004.dng",
                                      "SYN000006.jpg", "SYN000031.png"]
    assert problems == []
    photos, _ = collect_photos([str(mixed_folder / "*"), str(mixed_folder / "IMG_*.HEIC")])
    assert len(photos) == 6 and "notes.txt" not in {p.path.name for p in photos}  # each photo once, no notes


def test_every_photo_is_a_row_and_heic_gets_the_jpeg_call(mixed_folder, demo_index, tmp_path):
    rows, stderr = classify(mixed_folder, demo_index, tmp_path / "calls.csv")
    assert set(rows) == {"SYN000006.jpg", "SYN000031.png", "IMG_0001.HEIC", "IMG_0003.avif", "IMG_0004.dng",
                         "IMG_0002.CR2"}
    jpeg, heic = rows["SYN000006.jpg"], rows["IMG_0001.HEIC"]
    assert jpeg["status"] != "error" and jpeg["top_hit_id"]
    assert [heic[c] for c in CALL] == [jpeg[c] for c in CALL]
    assert float(heic["top_hit_similarity"]) == pytest.approx(float(jpeg["top_hit_similarity"]), abs=1e-3)
    assert rows["SYN000031.png"]["status"] != "error" and rows["IMG_0003.avif"]["status"] != "error"
    raw = rows["IMG_0002.CR2"]
    assert raw["status"] == "error" and "IMG_0002.CR2" in raw["error"] and not raw["top_hit_id"]
    if HAVE_RAWPY:
        assert "cannot decode the RAW photo" in raw["error"]
        assert [rows["IMG_0004.dng"][c] for c in CALL] == [jpeg[c] for c in CALL]
    else:
        assert RAW_INSTALL in raw["error"] and RAW_INSTALL in rows["IMG_0004.dng"]["error"]
    total, counts = summary_counts(stderr)
    assert total == len(rows) == 6
    assert counts == {status: Counter(r["status"] for r in rows.values()).get(status, 0) for status in counts}
    assert counts["error"] == (1 if HAVE_RAWPY else 2)


def test_raw_without_rawpy_is_an_error_row_naming_the_extra(mixed_folder, demo_index, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "rawpy", None)  # `import rawpy` raises ImportError, as when not installed
    rows, stderr = classify(mixed_folder, demo_index, tmp_path / "calls.csv")
    for name in ("IMG_0002.CR2", "IMG_0004.dng"):
        assert rows[name]["status"] == "error"
        assert name in rows[name]["error"] and 'pip install "clibd[raw]"' in rows[name]["error"]
    assert rows["IMG_0001.HEIC"]["status"] != "error"
    assert summary_counts(stderr)[1]["error"] == 2


def test_embed_reports_what_it_cannot_read_like_classify(mixed_folder, tmp_path):
    out = tmp_path / "photos.npy"
    result = invoke("embed", mixed_folder, "--model", EXAMPLES / "demo-model", "-o", out)
    assert result.exit_code == 0, result.output
    ids = [row["id"] for row in read_rows(tmp_path / "photos.ids.tsv")]
    errors = {row["id"]: row["reason"] for row in read_rows(tmp_path / "photos.errors.tsv")}
    readable = {"SYN000006.jpg", "SYN000031.png", "IMG_0001.HEIC", "IMG_0003.avif"}
    assert readable <= set(ids) and "IMG_0002.CR2" in errors
    assert set(ids) | set(errors) == readable | {"IMG_0002.CR2", "IMG_0004.dng"}
    vectors = np.load(out)
    assert vectors.shape[0] == len(ids)
    jpeg, heic = vectors[ids.index("SYN000006.jpg")], vectors[ids.index("IMG_0001.HEIC")]
    assert float(jpeg @ heic) == pytest.approx(1.0, abs=1e-3)


def test_heic_orientation_is_applied_once(tmp_path):
    """libheif rotates while decoding and resets EXIF orientation, so the photo is upright, not rotated twice."""
    photo = Image.open(SOURCE).convert("RGB").crop((0, 0, 64, 40))  # landscape, so a rotation shows
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to view
    write_heic(photo, tmp_path / "side.heic", exif=exif.tobytes())
    photo.save(tmp_path / "side.jpg", quality=100, exif=exif.tobytes())
    upright = load_image(tmp_path / "side.heic")
    assert upright.size == (40, 64)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "side.jpg")), dtype=float)
    assert np.abs(np.asarray(upright, dtype=float) - expected).mean() < 3


@pytest.mark.skipif(not HAVE_RAWPY, reason="rawpy (clibd[raw]) not installed")
def test_dng_is_demosaiced_not_read_as_its_tiff_preview(tmp_path):
    photo = np.asarray(Image.open(SOURCE).convert("RGB"))
    path = tmp_path / "IMG_0004.DNG"
    path.write_bytes(linear_dng(photo))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert np.abs(np.asarray(image, dtype=float) - photo).mean() < 4
    (tmp_path / "short.nef").write_bytes(b"\0" * 100)
    with pytest.raises(ImageError, match=r"short\.nef: cannot decode the RAW photo"):
        load_image(tmp_path / "short.nef")
