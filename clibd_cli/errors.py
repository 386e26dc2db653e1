"""Errors a user can cause.

The app turns every :class:`ClibdError` into one red line and exit code 2; anything else is a bug
and keeps its traceback.  Messages say what is wrong, where, and what to do.
"""


class ClibdError(Exception):
    """Base class for errors caused by input, options or files rather than by a bug."""


class InputError(ClibdError):
    """A file or record cannot be read or does not contain what the command needs."""


class IndexMismatchError(ClibdError):
    """An index and a query encoder (or two indexes) were made with different models."""


class OutputExistsError(ClibdError):
    """An output file exists and neither --resume nor --force was given."""
