"""The one exception slide reading raises."""

from __future__ import annotations

from pathlib import Path


class SlideError(Exception):
    """A slide cannot be used. The message names the file and the reason.

    ``reason`` is a short machine-friendly category: ``missing``, ``empty``, ``unsupported``,
    ``corrupt``, ``no-mpp``, ``bad-mpp`` (implausible override), ``too-coarse`` (patches would
    be upsampled past ``GridParams.max_upsample``), ``zero-size``, ``too-large`` (a thumbnail
    would decode too many pixels), ``no-tissue``, ``read``.
    """

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        msg = f"{self.path}: {reason}"
        if detail:
            msg += f" — {detail}"
        super().__init__(msg)
