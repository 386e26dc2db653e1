"""Image decoding and preprocessing (clibd_cli.preprocess): real BIOSCAN photos and every awkward format."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, encoded, jpeg, png_header_only
from PIL import Image

from clibd_cli.errors import InputError
from clibd_cli.preprocess import (
    DRAFT_MARGIN,
    ImageError,
    ImagePreprocessing,
    center_crop,
    image_to_array,
    load_image,
    preprocess_image,
    resized_size,
    to_rgb,
)

IMAGES = SHARED / "images"
SHARED_REASON = (f"real BIOSCAN photos not found at {IMAGES}; they exist only in the clibd development "
                 "setup and are never copied into the repository")
RAW = ImagePreprocessing(mean=None, std=None)


def shared_image(relative: str) -> Path:
    path = IMAGES / relative
    if not path.exists():
        pytest.skip(f"{path} is absent: {SHARED_REASON}")
    return path


# ---------------------------------------------------------------------------------------------
# The spec


def test_spec_defaults_round_trip_through_json():
    spec = ImagePreprocessing()
    assert (spec.size, spec.resize, spec.crop, spec.interpolation) == (224, 256, "center", "bicubic")
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    for original in (spec, RAW, ImagePreprocessing(size=32, resize=36, interpolation="bilinear")):
        again = ImagePreprocessing.from_dict(json.loads(json.dumps(original.to_dict())))
        assert again == original
        assert hash(again) == hash(original)


@pytest.mark.parametrize("bad", [
    {"mean": (0.5, 0.5, 0.5), "std": None}, {"size": 256, "resize": 224}, {"crop": "random"},
    {"interpolation": "cubic"}, {"mean": (0.5, 0.5), "std": (0.2, 0.2)}, {"std": (0.2, 0.0, 0.2)}])
def test_spec_rejects_inconsistent_values(bad):
    with pytest.raises(ValueError):
        ImagePreprocessing(**bad)


def test_spec_from_dict_refuses_unknown_options():
    with pytest.raises(ValueError, match="newer clibd"):
        ImagePreprocessing.from_dict({**RAW.to_dict(), "colour_jitter": 0.4})


def test_module_does_not_import_torch():
    code = "import sys, clibd_cli.preprocess; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ---------------------------------------------------------------------------------------------
# Real BIOSCAN photos


def test_full_resolution_photo_shape_dtype_and_range():
    path = shared_image("bioscan1m_order_examples/Diptera.jpg")
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (2880, 2160)
    raw = preprocess_image(path, RAW)
    assert raw.shape == (3, 224, 224) and raw.dtype == np.float32
    assert raw.min() >= 0.0 and raw.max() <= 1.0 and raw.std() > 0.01
    normalised = preprocess_image(path)
    mean, std = np.array(ImagePreprocessing().mean), np.array(ImagePreprocessing().std)
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, (raw - mean[:, None, None]) / std[:, None, None], atol=1e-5)


def test_draft_decoding_is_used_and_close_to_full_decode():
    path = shared_image("bioscan1m_order_examples/Hymenoptera.jpg")
    drafted = load_image(path, draft_min_side=round(DRAFT_MARGIN * 256))
    assert drafted.size == (720, 540)  # 1/4 scale: the short side stays ≥ 1.5 × 256
    fast = preprocess_image(path, RAW)  # a path: decoded with draft
    full = preprocess_image(load_image(path), RAW)  # a decoded image: full resolution
    assert fast.shape == full.shape
    assert np.abs(fast - full).mean() < 1.0 / 255  # measured ≈ 0.25 grey levels on these photos
    assert np.abs(fast - full).max() < 12.0 / 255


def test_draft_halves_1024px_photos_closely():
    path = shared_image("bioscan1m_imgfilter_subset/ABINP1749-21.1024px.jpg")
    assert load_image(path, draft_min_side=round(DRAFT_MARGIN * 256)).size == (512, 384)
    fast = preprocess_image(path, RAW)
    full = preprocess_image(load_image(path), RAW)
    assert np.abs(fast - full).mean() < 1.0 / 255  # measured ≈ 0.26 grey levels


def test_draft_is_not_used_when_the_image_is_small():
    path = shared_image("bioscan1m_cropped_examples/BIOUG68001-C12.jpg")
    assert load_image(path, draft_min_side=512).size == load_image(path).size == (341, 256)
    np.testing.assert_array_equal(preprocess_image(path, RAW), preprocess_image(load_image(path), RAW))


def test_odd_sized_real_photos():
    for relative in ("bioscan1m_cropped_examples/cropped_resized_BIOUG68001-C12.jpg",
                     "bioscan1m_imgfilter_subset/ABINP1749-21.1024px.jpg"):
        out = preprocess_image(shared_image(relative), ImagePreprocessing(size=224, resize=256))
        assert out.shape == (3, 224, 224) and np.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# Geometry and pixels


def test_geometry_follows_torchvision_rounding():
    assert resized_size(2880, 2160, 256) == (341, 256)
    assert resized_size(2160, 2880, 256) == (256, 341)
    assert resized_size(300, 300, 256) == (256, 256)
    crop = center_crop(Image.new("RGB", (341, 256)), 224)
    assert crop.size == (224, 224)


def test_constant_image_without_normalisation_keeps_exact_values():
    image = Image.new("RGB", (300, 200), (10, 128, 250))
    out = preprocess_image(image, ImagePreprocessing(size=64, resize=80, mean=None, std=None))
    assert out.shape == (3, 64, 64)
    for channel, value in enumerate((10, 128, 250)):
        np.testing.assert_array_equal(out[channel], np.float32(value) / np.float32(255))


def test_image_to_array_layout():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    out = image_to_array(Image.fromarray(pixels), RAW)
    assert out.shape == (3, 5, 7) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, pixels.transpose(2, 0, 1).astype(np.float32) / np.float32(255))


def test_crop_takes_the_centre_of_a_portrait_photo():
    # Portrait: top third red, middle green, bottom blue; the centre crop must be green.
    image = Image.new("RGB", (90, 270), (255, 0, 0))
    image.paste((0, 255, 0), (0, 90, 90, 180))
    image.paste((0, 0, 255), (0, 180, 90, 270))
    out = preprocess_image(image, ImagePreprocessing(size=40, resize=90, mean=None, std=None))
    centre = out[:, 10:30, 10:30].mean(axis=(1, 2))
    np.testing.assert_allclose(centre, [0, 1, 0], atol=0.01)


# ---------------------------------------------------------------------------------------------
# Formats


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (60, 40), (255, 0, 0))
    stored.paste((0, 0, 255), (30, 0, 60, 40))  # left red, right blue, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90° clockwise
    path = tmp_path / "rotated.jpg"
    path.write_bytes(jpeg(stored, exif=exif.tobytes()))
    upright = np.asarray(load_image(path), dtype=int)
    assert upright.shape == (60, 40, 3)  # portrait once rotated
    assert np.abs(upright[5, 20] - [255, 0, 0]).max() < 40  # old left side is now on top
    assert np.abs(upright[55, 20] - [0, 0, 255]).max() < 40


def test_png_alpha_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (255, 0, 0, 128)  # half-transparent red; the right half fully transparent black
    image = load_image(encoded(Image.fromarray(rgba, "RGBA"), "PNG"))
    pixels = np.asarray(image, dtype=int)
    assert image.mode == "RGB"
    np.testing.assert_array_equal(pixels[0, 6], [255, 255, 255])
    assert np.abs(pixels[0, 1] - [255, 127, 127]).max() <= 1
    la = Image.fromarray(np.dstack([np.full((4, 4), 0, np.uint8), np.full((4, 4), 0, np.uint8)]), "LA")
    np.testing.assert_array_equal(np.asarray(load_image(encoded(la, "PNG"))), 255)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_greyscale_is_scaled_not_clipped(fmt):
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16).repeat(4, axis=0)
    blob = encoded(Image.fromarray(values), fmt)
    assert Image.open(io.BytesIO(blob)).mode.startswith("I")
    pixels = np.asarray(load_image(blob))
    np.testing.assert_array_equal(pixels[0, :, 0], [0, 1, 128, 255])
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_cmyk_jpeg_colours_survive():
    colour = (200, 50, 30)
    blob = jpeg(Image.new("RGB", (32, 32), colour).convert("CMYK"))
    assert Image.open(io.BytesIO(blob)).mode == "CMYK"
    pixels = np.asarray(load_image(blob), dtype=int)
    assert np.abs(pixels[16, 16] - colour).max() <= 4


def test_palette_png_with_and_without_transparency():
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    np.testing.assert_array_equal(np.asarray(load_image(encoded(palette, "PNG")))[0, 0], [10, 200, 30])
    transparent = encoded(palette, "PNG", transparency=1)
    np.testing.assert_array_equal(np.asarray(load_image(transparent))[0, 0], [255, 255, 255])


@pytest.mark.parametrize("mode", ["L", "1", "I", "F", "YCbCr", "LAB", "HSV", "RGBA", "CMYK"])
def test_every_mode_becomes_8_bit_rgb(mode):
    image = Image.new("RGB", (6, 4), (120, 60, 200)).convert("L" if mode in ("I", "F") else "RGB")
    image = image.convert(mode) if mode not in ("LAB", "HSV") else Image.new(mode, (6, 4))
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (6, 4)


# ---------------------------------------------------------------------------------------------
# Errors


def test_truncated_jpeg_raises_naming_the_file(tmp_path):
    data = jpeg(Image.effect_noise((256, 256), 60).convert("RGB"))
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"truncated\.jpg: .*truncated"):
        load_image(path)


def test_corrupt_jpeg_header_raises(tmp_path):
    data = jpeg(Image.new("RGB", (64, 64), (1, 2, 3)))
    path = tmp_path / "corrupt.jpg"
    path.write_bytes(data[:2] + bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    with pytest.raises(InputError, match=r"corrupt\.jpg: "):
        load_image(path)


def test_text_file_named_jpg_raises(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("specimen notes, not a photo\n")
    with pytest.raises(InputError, match=r"notes\.jpg: not an image"):
        load_image(path)


def test_missing_empty_and_folder_sources_raise(tmp_path):
    with pytest.raises(ImageError, match=r"missing\.jpg: no such image file"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: the image file is empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="record ABC-1"):
        load_image(b"GIF89a broken", name="record ABC-1")


def test_max_pixels_refuses_large_images():
    blob = jpeg(Image.new("RGB", (400, 300)))
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(blob, max_pixels=100_000)
    assert load_image(blob, max_pixels=120_000).size == (400, 300)


@pytest.mark.parametrize("side", [10_000, 100_000])  # PIL warns above ~89 Mpx and raises above ~179 Mpx
def test_png_header_claiming_huge_dimensions_is_refused(tmp_path, side):
    path = tmp_path / f"bomb{side}.png"
    path.write_bytes(png_header_only(side, side))
    with pytest.raises(ImageError, match=rf"bomb{side}\.png.*decompression bomb"):
        load_image(path)
