"""Photo formats pillow does not read by itself: HEIC/HEIF (phones) and camera RAW.

Phones (every iPhone since 2017, many Android phones) and field cameras save HEIC/HEIF by default, so a
folder of field photos often mixes them with JPEGs.  pillow reads JPEG, PNG, TIFF, WebP, BMP, GIF and
(from 11.3) AVIF itself; HEIC/HEIF needs the ``pillow-heif`` plug-in (libheif, binary wheels for every
platform clibd supports, so it is a core dependency).  Its opener is registered on the first decode
(:func:`ensure_heif_opener`), not at import, so commands that decode no photo start no faster or
slower.  libheif applies the file's rotation while decoding and resets the EXIF orientation to 1, so
:func:`PIL.ImageOps.exif_transpose` after it does not rotate twice.

Camera RAW (``.CR2``, ``.NEF``, ``.DNG``…) is sensor data that must be demosaiced; ``rawpy`` (LibRaw)
does it and is the optional extra ``clibd[raw]``.  pillow must not be left to open a RAW file: many are
TIFF containers and pillow would return the small preview in their first directory as if it were the
photo.  Without rawpy a RAW photo is an error row that says what to install, never skipped.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from PIL import Image

# pillow decodes these itself (AVIF from pillow 11.3, whose wheels bundle libavif).
PILLOW_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif",
                                               ".avif"})
HEIF_EXTENSIONS: frozenset[str] = frozenset({".heic", ".heif", ".hif"})
RAW_EXTENSIONS: frozenset[str] = frozenset({".cr2", ".cr3", ".crw", ".nef", ".nrw", ".dng", ".arw", ".srf", ".sr2",
                                            ".orf", ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf",
                                            ".mrw", ".kdc", ".rwl"})
RAW_INSTALL: str = 'pip install "clibd[raw]"'
HEIF_INSTALL: str = "pip install pillow-heif"

_heif_lock = threading.Lock()
_heif_state: bool | None = None  # None: not tried yet; True: registered; False: pillow-heif missing


def suffix(path: str | os.PathLike) -> str:
    """The lower-case extension, ``.heic`` for ``IMG_0001.HEIC``."""
    return os.path.splitext(os.fspath(path))[1].lower()


def ensure_heif_opener() -> bool:
    """Register pillow-heif's HEIC/HEIF opener with pillow once per process; False if it is not installed.

    Called before every decode: after the first call it is a flag check.  The lock keeps decoding threads
    from registering it twice or opening a HEIC file half-way through the registration.
    """
    global _heif_state
    if _heif_state is not None:
        return _heif_state
    with _heif_lock:
        if _heif_state is None:
            try:
                import pillow_heif
            except ImportError:
                _heif_state = False
            else:
                pillow_heif.register_heif_opener()
                _heif_state = True
    return _heif_state


def looks_like_heif(head: bytes) -> bool:
    """ISO base media file (HEIC/HEIF/AVIF): an ``ftyp`` box first, whatever the file is named."""
    return len(head) >= 12 and head[4:8] == b"ftyp"


def heif_hint(label: str) -> str:
    """The message for a HEIC/HEIF photo when pillow-heif is not installed."""
    return f"{label}: a HEIC/HEIF photo, which needs the pillow-heif plug-in: {HEIF_INSTALL}."


def is_raw(path: str | os.PathLike) -> bool:
    return suffix(path) in RAW_EXTENSIONS


class RawError(Exception):
    """A RAW photo that cannot be read; the message names the file and, if needed, what to install."""


def read_raw(path: Path, label: str, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Demosaic a camera RAW file with rawpy (LibRaw) into an upright 8-bit RGB image.

    The camera's white balance is used (what the photographer saw on the camera's screen and what the
    camera's own JPEG shows) and LibRaw's rotation is applied.  ``min_side``: when both sides of the
    half-size output stay at least that large, LibRaw decodes at half size (4× fewer pixels, no
    interpolation), like a JPEG draft; the model sees a few hundred pixels anyway.  ``max_pixels`` is
    checked on the header, before decoding.
    """
    try:
        import rawpy
    except ImportError:
        raise RawError(f"{label}: a camera RAW photo ({suffix(path)}); reading RAW needs rawpy: {RAW_INSTALL}, "
                       "or convert it to JPEG/TIFF.") from None
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            width, height = raw.sizes.width, raw.sizes.height
            if width * height > max_pixels:
                raise RawError(f"{label}: {width}×{height} = {width * height:,} pixels exceeds the limit of "
                               f"{max_pixels:,} (possible decompression bomb). Downscale it, or raise max_pixels "
                               "if it is a genuine photo.")
            half = bool(min_side) and min(width, height) >= 2 * int(min_side or 0)
            rgb = raw.postprocess(use_camera_wb=True, half_size=half, output_bps=8)
    except RawError:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        detail = exc.args[0] if exc.args else ""
        detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(exc)  # LibRaw gives bytes
        raise RawError(f"{label}: cannot decode the RAW photo ({detail or type(exc).__name__}). Is the file "
                       "complete and from a camera LibRaw supports?") from exc
    return Image.fromarray(rgb, "RGB")
