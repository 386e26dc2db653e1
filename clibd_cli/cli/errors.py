"""How the commands fail: a user's mistake or the machine's state is one red line and exit code 2,
an interruption keeps finished rows (130), a closed pipe ends quietly (141); tracebacks are for bugs."""

from __future__ import annotations

import functools
import sys

import typer

from clibd_cli.cli.console import stderr
from clibd_cli.errors import ClibdError


def user_errors(func):
    """Turn :class:`ClibdError` into one red line on stderr and exit code 2 (tracebacks are for bugs)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ClibdError as exc:
            error_line(str(exc))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            stderr().print("[yellow]interrupted[/yellow]: finished rows were kept; rerun with --resume.")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            # `clibd match q.fasta | head`: the reader has all it wants.  Stop like a Unix tool killed by
            # SIGPIPE (status 141, no message); the writers were closed on the way out, so files are complete.
            silence_stdout()
            raise typer.Exit(141) from None
        except ModuleNotFoundError as exc:
            message = missing_extra(exc, func.__name__)
            if message is None:
                raise  # a module clibd itself should have: a bug or a broken install, keep the traceback
            error_line(message)
            raise typer.Exit(2) from None
        except OSError as exc:
            message = environment_error(exc)
            if message is None:
                raise
            error_line(message)
            raise typer.Exit(2) from None

    return wrapper


def error_line(message: str) -> None:
    from rich.markup import escape

    stderr().print(f"[red]error:[/red] {escape(message)}", soft_wrap=True, markup=True)


# Optional dependencies by the top-level module that needs them, and the pyproject extra installing them.
EXTRA_OF_MODULE = {"torch": "train", "torchvision": "train", "timm": "train", "transformers": "train",
                   "h5py": "train", "yaml": "train", "tensorboard": "train", "onnx": "export",
                   "onnxscript": "export", "matplotlib": "plots", "pyarrow": "parquet"}
# Commands needing several extras: a checkpoint is read with PyTorch and written as ONNX.
COMMAND_EXTRAS = {"export": ("train", "export"), "evaluate": ("train", "export")}


def missing_extra(exc: ModuleNotFoundError, function: str) -> str | None:
    """The line saying which extra to install, when ``exc`` is an optional dependency; None otherwise.

    `pip install clibd` leaves out torch and the rest on purpose (identification needs none of it), so a
    40-line traceback ending in "No module named 'torch'" is what every new user of `train` would see.
    """
    module = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    command = function.removesuffix("_command").replace("_", "-")
    wanted = COMMAND_EXTRAS.get(command, ())
    names = wanted if extra in wanted else (extra,)
    what = " and ".join(f"'{name}'" for name in names) + (" extras" if len(names) > 1 else " extra")
    extras = ",".join(names)
    return (f"'clibd {command}' needs {module}, which is not installed ({exc}). Install the {what}: "
            f"pip install 'clibd[{extras}]' (in a clone: pip install -e '.[{extras}]').")


def environment_error(exc: OSError) -> str | None:
    """One line for a file-system refusal (no permission, read-only, disk full); None for other OSErrors.

    These are the machine's state, not bugs.  Rows already written were flushed and the writers closed on
    the way out, so the line says so and how to continue.
    """
    import errno

    where = f"{exc.filename}: " if exc.filename else ""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{where}{reason}. Check the permissions of the file and its folder, or choose another path "
                "(-o for outputs).")
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG):
        return (f"{where}{reason} while writing. What was written before is kept: free some space or choose "
                "another -o, then rerun (match and classify continue with --resume).")
    if exc.errno == errno.ENOTDIR:
        return f"{where}{reason}: a part of this path is a file, not a folder. Choose another path."
    if exc.errno == errno.ELOOP:
        return f"{where}{reason}: symbolic links that point at each other. Remove the loop or choose another path."
    if exc.errno == errno.EEXIST:
        return (f"{where}{reason}, and is not what clibd can write there (a broken or looping link?). Choose "
                "another path.")
    return None


def silence_stdout() -> None:
    """Point standard output at the null device, as Python's documentation advises after EPIPE, so the
    interpreter's last flush of buffered rows does not fail again and print "Exception ignored"."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (tests capture stdout in memory)
        pass
