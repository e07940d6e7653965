"""The workbench's own error types: what the CLI prints as one line (exit status 2).

Anything raised as a :class:`WorkbenchError` is a problem with the user's input (a config value,
a dataset row, a checkpoint folder) and its message names the thing and the fix. Any other
exception is a bug in the workbench and keeps its traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class: bad input the user can fix; the message says what and how."""


class CheckpointError(WorkbenchError):
    """A saved model folder cannot be used: missing/corrupt file, wrong shapes, wrong method."""


class MissingFileError(WorkbenchError, FileNotFoundError):
    """A file or folder the user named does not exist."""
