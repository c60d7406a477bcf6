"""Form state that survives section switches, and results shown only with the form that made them.

Streamlit forgets the value of a widget that is not drawn in a run (while another section is
shown), so a section's form would come back at its defaults under its old results. :func:`keep`
gives a widget back its last value from a key of its own (``_kept:<key>``) before it is drawn.
:func:`save` stores a result with the form values that produced it; :func:`shown` returns it
only while the form still shows those values (else it says the form changed); a search calls
:func:`clear` first, so an error replaces the previous results instead of sitting above them.
:func:`number` is a number box whose out-of-range entry is brought back into range with a
message stating the limits (the browser would otherwise silently keep the previous value).
"""

from __future__ import annotations

import streamlit as st

KEPT = "_kept:"
NOTE = "_note:"
CHANGED = "The form changed since the last search: press the search button to see its results."


def keep(key: str, default=None, options=None, arg: str = "value") -> dict:
    """Call just before drawing widget ``key`` and pass what it returns to the widget: the
    argument (``arg``: "value", "index" for a selectbox/radio over ``options``, "default" for
    a multiselect) that starts it from its current value (the widget's own state while it
    exists), else its last value, else ``default``; ``{}`` when there is none. With ``options``
    (a list), a value no longer offered falls back to ``default`` (or the first option); a list
    value (multiselect) keeps only the options still offered.

    The start is passed on every run, also while the widget's state exists (which still wins):
    the browser takes a widget's start from the run that first draws it, and a widget that
    reaches the page only in a later run (the first run was cut short by a click) would
    otherwise start from Streamlit's own default (0, the first option) and send that back as
    the user's entry with the next click. The value is not written into the widget's own key:
    a widget given its start both ways may show the wrong one in a fresh browser session."""
    ss = st.session_state
    opts = None if options is None else list(options)

    def offered(value):
        if opts is None or value is None:
            return value
        if isinstance(value, list):
            return [v for v in value if v in opts]
        if value in opts:
            return value
        return default if default in opts else (opts[0] if opts else None)

    if key in ss:
        value = offered(ss[key])
        if value != ss[key]:
            del ss[key]  # an option no longer offered: start again from a valid one
    else:
        value = offered(ss.get(KEPT + key, default))
    if value is None:
        return {}
    ss[KEPT + key] = value
    if arg == "index":
        return {"index": opts.index(value)} if opts else {}
    return {arg: value}


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _clamp(key: str, lo, hi, label: str, empty_ok: bool) -> None:
    value = st.session_state.get(key)
    if value is None:
        if empty_ok:
            return
        fixed, why = lo, "it was empty"
    elif value < lo or value > hi:
        fixed, why = min(hi, max(lo, value)), f"{_fmt(value)} is outside {_fmt(lo)}–{_fmt(hi)}"
    else:
        return
    st.session_state[key] = st.session_state[KEPT + key] = fixed
    st.session_state[NOTE + key] = (
        f"{label}: {why} (at least {_fmt(lo)}, at most {_fmt(hi)}); set to {_fmt(fixed)}."
    )


def number(container, label: str, key: str, default, lo, hi, empty_ok: bool = False, **kw):
    """A number box in ``container`` (``st`` or a column) kept across sections: integer when
    ``lo``, ``hi`` and ``default`` are ints (else ``step`` and ``format`` may be given in
    ``kw``). An entry outside ``lo``..``hi`` is set to the nearest limit and :func:`notes` says
    so; an empty box is ``None`` when ``empty_ok``, else ``lo``. Every run gives the box its
    current value as its start (see :func:`keep`): without one Streamlit starts it at 0."""
    kw["value"] = keep(key, default).get("value", None if empty_ok else default)
    if isinstance(lo, int) and isinstance(hi, int):
        kw.setdefault("step", 1)
    value = container.number_input(
        label, key=key, on_change=_clamp, args=(key, lo, hi, label, empty_ok), **kw
    )
    if value is None:
        return None if empty_ok else lo
    return min(hi, max(lo, value))


def notes(*keys: str) -> None:
    """Show (once) the messages of :func:`number` boxes that were brought back into range."""
    for key in keys:
        note = st.session_state.pop(NOTE + key, None)
        if note:
            st.warning(note)


def file_key(upload) -> tuple | None:
    """What identifies an uploaded file in a form: (name, size, upload id), or None."""
    if upload is None:
        return None
    return (upload.name, upload.size, getattr(upload, "file_id", None))


def clear(name: str) -> None:
    """Forget the result ``name`` (call before a search: an error must not leave it shown)."""
    st.session_state.pop(name, None)


def save(name: str, form: dict, **result) -> None:
    """Store a result with the ``form`` values that produced it."""
    st.session_state[name] = {"form": dict(form), **result}


def shown(name: str, form: dict) -> dict | None:
    """The result ``name`` when it was produced by ``form`` as it is now; else None (and, when
    a result of another form exists, a line saying the form changed)."""
    res = st.session_state.get(name)
    if res is None:
        return None
    if res["form"] != dict(form):
        st.info(CHANGED)
        return None
    return res
