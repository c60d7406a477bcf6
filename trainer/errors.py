"""Errors of the trainer that the CLI turns into a message and exit code 2."""

from __future__ import annotations


class TrainingDataError(ValueError):
    """The inputs cannot form a training set; the message says what to fix."""


class TrainingError(RuntimeError):
    """Training ran but produced no trained model (e.g. an epoch made no optimiser step)."""
