"""Errors of the trainer: user errors (:class:`~threads_search.errors.ThreadsSearchError`), which
the CLI prints as one line with exit code 2."""

from __future__ import annotations

from threads_search.errors import InputError, ThreadsSearchError


class TrainingDataError(InputError):
    """The inputs cannot form a training set; the message says what to fix (also a
    ``ValueError``)."""


class TrainingError(ThreadsSearchError, RuntimeError):
    """Training ran but produced no trained model (e.g. an epoch made no optimiser step)."""
