"""The `clibd` command line's entry points, kept here for `clibd_cli.app:main` (the console script),
`python -m clibd_cli.app` and `from clibd_cli.app import app`.

The commands live in :mod:`clibd_cli.cli`, one module per concern; they parse options, call the library
(:mod:`clibd_cli.api`) and print.
"""

from __future__ import annotations

from clibd_cli.cli import app, main
from clibd_cli.cli.errors import user_errors

__all__ = ["app", "main", "user_errors"]

if __name__ == "__main__":
    main()
