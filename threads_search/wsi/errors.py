"""The errors of slide reading: ``SlideError`` (a slide cannot be used) and ``MppError`` (a
µm/px override or mpp CSV cannot be used). Both are ``ThreadsSearchError``s: the user's input,
never a bug."""

from __future__ import annotations

from pathlib import Path

from threads_search.errors import InputError, ThreadsSearchError


class SlideError(ThreadsSearchError):
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

    def __reduce__(self):
        # rebuilt from its three parts when it crosses a process (reader workers, Ray tasks)
        return type(self), (self.path, self.reason, self.detail)


class MppError(InputError):
    """A µm/px override (``--mpp``, an mpp CSV row) that is not a plausible level-0 resolution,
    or an mpp CSV that cannot be read; the message names the value or file and the fix."""
