"""Slide ids → file paths: the one place where a path is built from a ``slide_id``.

A slide id names files inside the output folders (FEATURES_DIR ``h5/<id>.h5``,
``thumbnails/<id>.jpg``, ``contours/<id>.geojson``; INDEX_DIR ``work/slides/<id>.npz`` and a
generation's ``attention/<id>.parquet``, ``thumbnails/<id>.jpg``). An id may hold ``/``
(subfolders), but it is refused (``UnsafeSlideIdError``) when it could name a file outside the
folder or one that the writers would mistake for something else: empty, absolute, a ``.``,
``..`` or empty component, a component starting with ``.`` (hidden names are temporaries), ``\\``,
NUL or other control characters, or text that cannot be written as UTF-8 (lone surrogates from
file names that are not UTF-8). ``id_component`` turns any file name into a safe part by
escaping those characters as ``%XX``; ``display_text`` makes any path or message writable to
Parquet, HDF5 and the terminal.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from threads_search.errors import InputError

MAX_COMPONENT_BYTES = 200  # leaves room for suffixes and temporary names within 255 bytes


class UnsafeSlideIdError(InputError):
    """A slide id that cannot safely name a file inside an output folder (a ``ValueError``)."""


def _bad_char(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or o == 0x7F or c == "\\" or 0xD800 <= o <= 0xDFFF


def check_slide_id(slide_id: str) -> str:
    """``slide_id`` unchanged when it is safe (see the module docstring); else raises
    ``UnsafeSlideIdError`` naming the fault."""
    if not isinstance(slide_id, str) or not slide_id:
        raise UnsafeSlideIdError(f"slide id {slide_id!r}: must be a non-empty string")
    fault = ""
    if slide_id.startswith("/"):
        fault = "is an absolute path"
    elif any(_bad_char(c) for c in slide_id):
        fault = "holds a control character, a backslash or text that is not UTF-8"
    else:
        for part in slide_id.split("/"):
            if part in ("", ".", ".."):
                fault = f"has an empty, '.' or '..' component ({part!r})"
                break
            if part.startswith("."):
                fault = f"has a component starting with '.' ({part!r})"
                break
    if fault:
        raise UnsafeSlideIdError(
            f"slide id {display_text(slide_id)!r} {fault}; ids are relative names inside the "
            "output folder"
        )
    return slide_id


def slide_file(base: str | Path, slide_id: str, suffix: str) -> Path:
    """``base/<slide_id><suffix>`` (e.g. ``FEATURES_DIR/h5``, ``"x"``, ``".h5"``), never outside
    ``base``. Raises ``UnsafeSlideIdError``."""
    parts = check_slide_id(slide_id).split("/")
    parts[-1] += suffix
    return Path(base).joinpath(*parts)


def slide_id_of(base: str | Path, path: str | Path, suffix: str) -> str | None:
    """Inverse of ``slide_file``: the id of ``path`` under ``base``, or None when ``path`` is
    not such a file (temporary, hidden, other suffix, unsafe name)."""
    try:
        rel = Path(path).relative_to(base).as_posix()
    except ValueError:
        return None
    if not rel.endswith(suffix) or len(rel) == len(suffix):
        return None
    sid = rel[: -len(suffix)] if suffix else rel
    try:
        return check_slide_id(sid)
    except UnsafeSlideIdError:
        return None


def id_component(name: str) -> str:
    """A file name made safe as one id component: undecodable bytes (``os.fsdecode``
    surrogates), control characters, ``\\`` and ``/`` become ``%XX``, a leading ``.`` becomes
    ``%2E``; a name longer than ``MAX_COMPONENT_BYTES`` is shortened with a hash of the whole.
    Deterministic; ordinary names are unchanged."""
    out = []
    for c in name:
        o = ord(c)
        if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"%{o - 0xDC00:02X}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append(f"%u{o:04X}")
        elif o < 0x20 or o == 0x7F or c in "\\/":
            out.append(f"%{o:02X}")
        else:
            out.append(c)
    text = "".join(out) or "%00"
    if text.startswith("."):
        text = "%2E" + text[1:]
    raw = text.encode()
    if len(raw) > MAX_COMPONENT_BYTES:
        digest = hashlib.sha1(raw).hexdigest()[:12]
        text = raw[: MAX_COMPONENT_BYTES - 13].decode(errors="ignore") + "~" + digest
    return text


def display_text(text) -> str:
    """``text`` (a path or message) as valid UTF-8: bytes that were not UTF-8 in a file name
    are shown as ``\\xNN``. Ordinary text is unchanged."""
    s = str(text)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        pass
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
