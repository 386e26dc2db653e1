"""Where installed models live, and how ``--model NAME`` finds one.

`clibd models get NAME` installs a bundle in ``<cache>/models/NAME``; ``<cache>`` is ``$CLIBD_HOME`` when set
(tests, shared lab installs, a disk with room), else the user cache folder of the platform
(``~/.cache/clibd`` on Linux).  Every command taking ``--model`` accepts a bundle folder as before, or, when no
such folder exists, the name of an installed model: :func:`resolve_model` is the one place that decides.
"""

from __future__ import annotations

import os
from pathlib import Path

from clibd_cli.bundle import MANIFEST, BundleError

HOME_ENV = "CLIBD_HOME"


def cache_root() -> Path:
    """``$CLIBD_HOME`` or the platform's user cache folder for clibd (read at call time)."""
    home = os.environ.get(HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("clibd"))


def models_dir() -> Path:
    return cache_root() / "models"


def installed_path(name: str) -> Path | None:
    """The installed bundle called ``name``, or None."""
    if not _bare_name(name):
        return None
    folder = models_dir() / name
    return folder if (folder / MANIFEST).is_file() else None


def installed_names() -> list[str]:
    """Names of every installed bundle (finished installs only: temporary folders start with a dot)."""
    root = models_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())


def resolve_model(model: str | Path) -> Path:
    """A bundle folder for ``--model``: the folder itself if it exists, else the installed model of that name.

    A bare word that is neither is one clear line naming what is installed and how to get more; a path with
    a folder separator that does not exist is left for the bundle loader to report.
    """
    path = Path(model).expanduser()
    if path.exists() or not _bare_name(str(model)):
        return path
    name = str(model)
    found = installed_path(name)
    if found is not None:
        return found
    from clibd_cli.published import find

    if find(name) is not None:
        raise BundleError(f"--model {name}: the published model {name} is not installed (in {models_dir()}); "
                          f"install it with 'clibd models get {name}'.")
    installed = installed_names()
    have = f"installed: {', '.join(installed)}" if installed else f"none are installed in {models_dir()}"
    raise BundleError(f"--model {name}: no bundle folder of that name and no installed model called {name} ({have}). "
                      "See 'clibd models list', or give a folder written by 'clibd export'.")


def _bare_name(text: str) -> bool:
    """A word that can be a model name: no folder separators, not '.'/'..', not hidden."""
    return bool(text) and "/" not in text and os.sep not in text and not text.startswith(".") and \
        (os.altsep is None or os.altsep not in text)
