"""The one error base of threads-search, and the generic kinds under it.

Every problem with what a user gave — a file, a table, a slide, a setting, a query — is raised
as a :class:`ThreadsSearchError` (usually one of the typed errors of the module concerned:
``SlideError``, ``MolecularDataError``, ``QueryError``, ``FilterError``, ...), whose message
names the input, the fault and the fix. The CLI prints such an error as one line and exits
with code 2; any other exception is a bug and is shown with its traceback (exit code 1).

The generic kinds also derive from the matching built-in exception, so code that caught
``ValueError`` or ``FileNotFoundError`` before keeps working.
"""

from __future__ import annotations


class ThreadsSearchError(Exception):
    """A problem with the inputs, settings or state threads-search was given; never a bug."""


class InputError(ThreadsSearchError, ValueError):
    """A value, file, table or query that cannot be used as given."""


class MissingError(ThreadsSearchError, FileNotFoundError):
    """A file or folder that is needed is not there."""


class ConfigError(ThreadsSearchError, ValueError):
    """Settings that are invalid or do not fit together (an unknown key, a value outside its
    choices, settings other than those an artifact was made with)."""


class BusyError(ThreadsSearchError, RuntimeError):
    """Another process is writing the same folder."""
