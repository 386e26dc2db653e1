"""File names read from a manifest stay inside the manifest's folder.

Bundle and index manifests name the files to load next to them.  A name edited to ``../x.onnx``, to an
absolute path, or to a link pointing elsewhere would make clibd load (or checksum) a file the user never
handed over: a model from another folder, ``/etc/passwd`` as an HNSW graph.  Every such name goes
through :func:`confined` before it is opened.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from clibd_cli.errors import InputError


def confined(directory: Path, name: object, *, manifest: str, what: str, remedy: str,
             error: type[InputError] = InputError) -> Path:
    """``directory / name``, refused unless ``name`` is a relative path that resolves inside ``directory``.

    Checked twice: by spelling (absolute, drive letter, ``..``), which catches the edit whatever exists on
    disk, and after resolving links, which catches a link inside the folder that leads out of it.
    """
    text = name if isinstance(name, str) else ""
    posix = PurePosixPath(text.replace("\\", "/"))
    spelled_out = (not text or posix.is_absolute() or PureWindowsPath(text).drive != "" or ".." in posix.parts)
    path = Path(directory) / text
    if spelled_out or not path.resolve().is_relative_to(Path(directory).resolve()):
        raise error(f"{directory}: {manifest} names the file {name!r}, which is outside the {what} folder "
                    f"(absolute path, '..' or a link leading out); clibd loads only files inside it. {remedy}")
    return path
