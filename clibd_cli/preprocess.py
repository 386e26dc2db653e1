"""Image decoding and preprocessing: the one implementation shared by training and inference.

A model only works on pixels prepared exactly as it saw them in training, so the resize, crop, scaling
and normalisation live here (numpy + pillow, no torch) and both the field runtime and
:mod:`clibd_training.data` call them.  The parameters travel with every model in its manifest as an
:class:`ImagePreprocessing` (``to_dict``/``from_dict``).

Decoding (:func:`load_image`) is defensive because field photos come from anywhere: besides pillow's own
formats it reads HEIC/HEIF and camera RAW (see :mod:`clibd_cli.image_formats`), EXIF orientation is
applied (camera phones store portrait shots sideways), transparency is composited on white, palette,
16-bit and CMYK images are converted to 8-bit RGB properly (PIL's plain ``convert`` clips 16-bit data),
decompression bombs and aspect-ratio bombs (:data:`MAX_ASPECT_RATIO`) are refused, and every failure
becomes an :class:`ImageError` naming the file.

The geometry follows torchvision's ``Resize(int)`` + ``CenterCrop`` on PIL images exactly (same output
size rounding, same crop offsets, PIL's antialiased resampling), so a PIL-based evaluation pipeline and
this one give identical arrays.  The official CLIBD code resizes float tensors with bilinear
interpolation instead; an importer for its checkpoints should set ``interpolation="bilinear"`` and
``mean=std=None`` (differences left are below one grey level).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from clibd_cli.errors import InputError
from clibd_cli.image_formats import HEIF_EXTENSIONS, RawError, ensure_heif_opener, heif_hint, is_raw, read_raw, suffix

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

INTERPOLATIONS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
CROPS: tuple[str, ...] = ("center",)

# PIL's own default limit (~89.5 Mpx, a 9500×9500 photo): far above any camera (BIOSCAN originals are
# 6.2 Mpx) and far below what would exhaust memory.  Read at import so a caller changing PIL's global
# afterwards does not silently change ours.
DEFAULT_MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)

# The pixel count does not bound memory on its own: the evaluation transform resizes the short side to
# ``resize`` before the centre crop, so the resized image has resize² × (long side / short side) pixels.
# A 1 × 2,000,000 PNG (3.9 KB on disk, 2 Mpx) would become 256 × 512,000,000 (~500 GB): MemoryError and
# the whole run lost.  At this bound the resized image stays under 256 × 5,120 (5 MB), and the long side
# under √(DEFAULT_MAX_PIXELS × 20) ≈ 42,000 px.  No photo of a specimen is that elongated (BIOSCAN's are
# 4:3, a stitched panorama about 4:1), and a centre crop would keep under 5 % of such an image anyway.
MAX_ASPECT_RATIO: float = 20.0

# JPEG draft decoding (DCT-domain downscaling by 1/2, 1/4 or 1/8) is only used while the decoded short
# side stays at least this many times the resize target, so the final antialiased resize still does a
# real reduction and the result stays within about one grey level of a full decode.  Measured on the
# BIOSCAN photos: 2880×2160 at 1/4 and 1024×768 at 1/2 (1.5 × 256 = 384 px short side) both differ from a
# full decode by 0.26 grey levels on average, and the 1024 px ones decode 3× faster (12.6 → 4.3 ms),
# which keeps photo decoding from competing with the model for a laptop's cores.
DRAFT_MARGIN: float = 1.5

ImageSource = str | os.PathLike | bytes | bytearray | memoryview


class ImageError(InputError):
    """An image file or blob cannot be decoded (missing, not an image, truncated, too large)."""


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a model's input images are made; stored in model manifests so inference repeats training.

    ``resize`` is the short side after resizing, ``size`` the square centre crop taken from it.
    ``mean``/``std`` normalise per channel after scaling to [0, 1]; ``None`` for both keeps [0, 1]
    (what the official CLIBD checkpoints expect).
    """

    size: int = 224
    resize: int = 256
    crop: str = "center"
    mean: tuple[float, float, float] | None = IMAGENET_MEAN
    std: tuple[float, float, float] | None = IMAGENET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        # Manifests and YAML give lists; freeze them into tuples so specs compare and hash by value.
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                if len(value) != 3:
                    raise ValueError(f"ImagePreprocessing.{name} needs 3 values (R, G, B), got {len(value)}")
                object.__setattr__(self, name, value)
        if (self.mean is None) != (self.std is None):
            raise ValueError("ImagePreprocessing: give both mean and std, or neither (no normalisation)")
        if self.std is not None and any(v <= 0 for v in self.std):
            raise ValueError(f"ImagePreprocessing.std must be positive, got {self.std}")
        if int(self.size) != self.size or self.size < 1:
            raise ValueError(f"ImagePreprocessing.size must be a positive integer, got {self.size!r}")
        if int(self.resize) != self.resize or self.resize < self.size:
            raise ValueError(f"ImagePreprocessing.resize ({self.resize!r}) must be an integer ≥ size ({self.size})")
        if self.crop not in CROPS:
            raise ValueError(f"ImagePreprocessing.crop {self.crop!r} is not supported; use one of {CROPS}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"ImagePreprocessing.interpolation {self.interpolation!r} is not supported; "
                             f"use one of {tuple(INTERPOLATIONS)}")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "resize", int(self.resize))

    @property
    def normalised(self) -> bool:
        return self.mean is not None

    @property
    def resample(self) -> Image.Resampling:
        """The PIL resampling filter named by ``interpolation``."""
        return INTERPOLATIONS[self.interpolation]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists) for model manifests and checkpoints."""
        out = asdict(self)
        for name in ("mean", "std"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImagePreprocessing:
        """Inverse of :meth:`to_dict`; unknown keys are refused rather than silently ignored.

        A manifest written by a newer clibd with a preprocessing option this version does not know
        would otherwise be run with different pixels than the model was trained on.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown image preprocessing option(s) {unknown}; known: {sorted(known)}. "
                             "Was the model made by a newer clibd?")
        return cls(**dict(data))


# ---------------------------------------------------------------------------------------------
# Decoding


def _describe(source: ImageSource, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, bytes | bytearray | memoryview):
        return f"<{len(source)} bytes of image data>"
    return os.fspath(source)


def _open(source: ImageSource, label: str) -> Image.Image:
    """``Image.open`` on a path or bytes, with file-system errors turned into :class:`ImageError`."""
    ensure_heif_opener()
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError(f"{label}: the image data is empty.")
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(_existing_file(Path(os.fspath(source)), label))


def _existing_file(path: Path, label: str) -> Path:
    """``path`` if it is a non-empty file; else :class:`ImageError` saying what it is instead."""
    if not path.exists():
        if path.is_symlink():
            raise ImageError(f"{label}: broken symbolic link: its target {os.readlink(path)} does not exist. "
                             "Fix or remove the link.")
        raise ImageError(f"{label}: no such image file. Check the path.")
    if path.is_dir():
        raise ImageError(f"{label}: is a folder, expected an image file.")
    if path.stat().st_size == 0:
        raise ImageError(f"{label}: the image file is empty (0 bytes).")
    return path


def _load_raw(path: Path, label: str, max_pixels: int, draft_min_side: int | None) -> Image.Image:
    """A camera RAW file demosaiced by rawpy; pillow would return the small preview of its first TIFF page."""
    try:
        image = read_raw(_existing_file(path, label), label, max_pixels, draft_min_side)
    except RawError as exc:
        raise ImageError(str(exc)) from exc
    check_shape(*image.size, label)
    return image


def check_shape(width: int, height: int, label: str) -> None:
    """Refuse an image more elongated than :data:`MAX_ASPECT_RATIO` before anything is resized.

    Checked on the header, before decoding, so an aspect-ratio bomb costs no memory; the error names the
    file, and callers that go on past bad photos (classify, embed) make it an error row.
    """
    long_side, short_side = max(width, height), max(min(width, height), 1)
    if long_side > MAX_ASPECT_RATIO * short_side:
        ratio = long_side / short_side
        shown = f"{ratio:,.0f}" if ratio >= 100 else f"{ratio:.1f}"
        raise ImageError(
            f"{label}: {width:,}×{height:,} pixels is {shown}:1, more elongated than the "
            f"{MAX_ASPECT_RATIO:g}:1 clibd accepts (possible aspect-ratio bomb: resizing it for the model would "
            "need memory in proportion, and the centre crop would keep a sliver of it). Crop it to the specimen.")


def _draft(image: Image.Image, min_side: int) -> None:
    """Let a big JPEG decode at 1/2, 1/4 or 1/8 scale, keeping both sides ≥ ``min_side``.

    Decoding a 2880×2160 photo fully costs ~10× more than decoding it at 1/4 scale, and the result is
    resized to 256 px anyway.  Asking for a square ``min_side`` box keeps the short side ≥ min_side
    whatever the orientation.
    """
    if image.format not in ("JPEG", "MPO"):
        return
    width, height = image.size
    if min(width, height) >= 2 * min_side:
        image.draft(None, (min_side, min_side))


def _composite_on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale integer/float grey levels to 0-255 instead of clipping them as PIL's convert does."""
    values = values.astype(np.float64)
    if mode.startswith("I;16"):
        scaled = values / 257.0
    elif mode == "F":
        top = float(values.max()) if values.size else 0.0
        scaled = values * 255.0 if top <= 1.0 else values
    else:  # "I": 32-bit ints, usually 16-bit data; ≤ 255 is taken as 8-bit data stored wide.
        top = float(values.max()) if values.size else 0.0
        if top <= 255:
            scaled = values
        elif top <= 65535:
            scaled = values / 257.0
        else:
            scaled = values * (255.0 / top)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB: alpha over white, palettes expanded, 16-bit scaled, CMYK converted.

    White is the background of BIOSCAN-style specimen photos, so a transparent cut-out looks like
    the training images.  Adobe (inverted) CMYK JPEGs are already un-inverted by PIL's decoder.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(image)
    if mode == "P":
        if "transparency" in image.info:
            return _composite_on_white(image)
        return image.convert("RGB")
    if mode.startswith("I") or mode == "F":
        grey = _grey_to_uint8(np.asarray(image), mode)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "1":
        return image.convert("L").convert("RGB")
    return image.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV


def load_image(source: ImageSource, max_pixels: int = DEFAULT_MAX_PIXELS, *, name: str | None = None,
               draft_min_side: int | None = None) -> Image.Image:
    """Decode an image file or blob to an upright 8-bit RGB PIL image.

    HEIC/HEIF is read through pillow-heif, registered on the first call; a file with a camera RAW
    extension (:data:`~clibd_cli.image_formats.RAW_EXTENSIONS`) through rawpy, and without rawpy it is
    an :class:`ImageError` that says what to install.  ``name`` labels error messages (e.g. a record id
    for HDF5 blobs).  ``draft_min_side`` allows JPEGs (and RAW files, at half size) to be decoded at
    reduced scale as long as both sides stay ≥ that many pixels (see :func:`preprocess_image`).
    Raises :class:`ImageError` (an :class:`InputError`) naming the file for missing, empty, non-image,
    truncated or corrupt data, for images over ``max_pixels`` and for images more elongated than
    :data:`MAX_ASPECT_RATIO`.
    ``max_pixels`` can only lower PIL's own limit (``PIL.Image.MAX_IMAGE_PIXELS``, which PIL enforces
    while reading the header); raising it needs that global raised too.
    """
    label = _describe(source, name)
    if not isinstance(source, bytes | bytearray | memoryview) and is_raw(source):
        return _load_raw(Path(os.fspath(source)), label, max_pixels, draft_min_side)
    try:
        # PIL warns (not raises) between MAX_IMAGE_PIXELS and twice that; make it fatal.  On
        # Python 3.11 catch_warnings is process-global, so with several decoding threads one can restore
        # the filters while another is inside: that one's warning then only prints (seen in CI,
        # tests/test_photos.py with 4 workers), and the size check below refuses the image all the same.
        # The command line sets the filter for its whole process first (clibd_cli.cli._refuse_bomb_warnings).
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(source, label) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{label}: {width}×{height} = {width * height:,} pixels exceeds the limit of "
                        f"{max_pixels:,} (possible decompression bomb). Downscale it, or raise max_pixels "
                        "if it is a genuine photo.")
                check_shape(width, height, label)
                if draft_min_side:
                    _draft(image, draft_min_side)
                image.load()
                frame = image
                try:
                    frame = ImageOps.exif_transpose(image)
                except Exception:  # broken EXIF is metadata damage: keep the pixels as stored
                    frame = image
                rgb = to_rgb(frame)
                if rgb is image:
                    rgb = image.copy()  # detach from the file handle closed by the with-block
                return rgb
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{label}: refused as a possible decompression bomb ({exc}).") from exc
    except Image.UnidentifiedImageError as exc:
        if suffix(label) in HEIF_EXTENSIONS and not ensure_heif_opener():
            raise ImageError(heif_hint(label)) from exc
        raise ImageError(f"{label}: not an image, or a format pillow cannot read.") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        raise ImageError(f"{label}: cannot decode the image ({exc}). Is the file complete and not corrupt?") from exc


# ---------------------------------------------------------------------------------------------
# Geometry and pixels


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``short_side``, rounded like torchvision's Resize."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def resize_short_side(image: Image.Image, short_side: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side is ``short_side``, keeping the aspect ratio."""
    target = resized_size(*image.size, short_side)
    if target == image.size:
        return image
    return image.resize(target, INTERPOLATIONS[interpolation])


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """The central ``size``×``size`` square, offsets rounded like torchvision's CenterCrop."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"cannot centre-crop {size}×{size} from a {width}×{height} image; resize first")
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def image_to_array(image: Image.Image, spec: ImagePreprocessing) -> np.ndarray:
    """8-bit RGB image → float32 [3, H, W] in [0, 1], normalised with ``spec.mean``/``spec.std`` if set.

    The training augmentation ends here too, so pixel scaling can never differ between training and
    inference.  Float32 division by 255 then ``(x - mean) / std`` matches torchvision's ToTensor +
    Normalize bit for bit.
    """
    if image.mode != "RGB":
        image = to_rgb(image)
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    array = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    if spec.mean is not None and spec.std is not None:
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
        array = (array - mean) / std
    return array


def preprocess_image(image: Image.Image | ImageSource, spec: ImagePreprocessing = ImagePreprocessing(), *,
                     max_pixels: int = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """The evaluation transform: resize short side, centre crop, scale (and normalise) → float32 [3, S, S].

    ``image`` may be a decoded PIL image or a path/bytes; given a path or bytes, a JPEG much larger than
    needed is decoded at reduced scale (:data:`DRAFT_MARGIN` × ``spec.resize`` short side kept), which
    is several times faster on full-resolution photos and changes the result by about a grey level.
    """
    if not isinstance(image, Image.Image):
        image = load_image(image, max_pixels, name=name, draft_min_side=round(DRAFT_MARGIN * spec.resize))
    else:
        check_shape(*image.size, name or "image")
        if image.mode != "RGB":
            image = to_rgb(image)
    image = resize_short_side(image, spec.resize, spec.interpolation)
    image = center_crop(image, spec.size)
    return image_to_array(image, spec)
