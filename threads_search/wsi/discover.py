"""Find slides in files and folders and give each a unique, relative, stable ``slide_id``.

Slide-id rule, applied to all the slides of one run together (``features A B``, ``index A B``):

1. the file's stem (``A/sub/x.svs`` → ``x``) when no other slide of the run has that stem;
2. else the path relative to the input it was found under (the folder given, or the folder of
   a file given directly), ``/``-separated, extension kept (``A/sub/x.svs`` → ``sub/x.svs``);
3. if that still collides (the same relative path under two input folders), the input folder's
   name goes in front (``A/x.svs`` and ``B/x.svs``), and for input folders that share their
   name too, as many of their parent folders' names as needed (``run1/A/x.svs``);
4. ids still equal get ``~2``, ``~3``… in the order of the files' absolute paths.

Each file-name part is made safe with ``threads_search.paths.id_component`` (bytes that are not
UTF-8, control characters and ``\\`` as ``%XX``, a leading ``.`` as ``%2E``: ``caf\\xe9.svs`` →
``caf%E9``), so an id is never absolute, never holds ``..`` and names files only inside the
output folders. The same inputs give the same ids on every run; adding a slide whose stem
collides with an existing one changes both to rule 2 (as the stem rule implies). A file reachable
from two inputs is taken once, under the outermost input folder.
"""

from __future__ import annotations

import errno
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from threads_search.paths import id_component

SLIDE_EXTENSIONS = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".vms",
    ".vmu",
    ".scn",
    ".mrxs",
    ".svslide",
    ".bif",
)


@dataclass(frozen=True)
class SlideRef:
    """A slide to process: ``path`` (file, or folder for DICOM WSI) and its ``slide_id``.

    ``problem`` is ``(reason, detail)`` when discovery already knows the input cannot be a slide
    (a symbolic-link loop, a folder with no slides); the slide is then recorded as failed."""

    slide_id: str
    path: Path
    problem: tuple[str, str] | None = None


def _is_dicom_dir(p: Path) -> bool:
    try:
        return p.is_dir() and any(p.glob("*.dcm"))
    except OSError:
        return False


def _link_problem(p: Path) -> tuple[str, str] | None:
    """Why ``p`` cannot be opened at all (a link loop or a dangling link), else None."""
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symlink-loop", "a symbolic-link loop: the link never reaches a file"
        if p.is_symlink():
            return "missing", f"a symbolic link to {os.readlink(p)!r}, which does not exist"
    return None


def _walk(root: Path) -> list[tuple[Path, tuple[str, str] | None]]:
    found = []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue  # hidden files and folders (temporary writes)
        if _is_dicom_dir(p):
            found.append((p, None))
        elif p.suffix.lower() in SLIDE_EXTENSIONS and not p.is_dir():
            if p.is_file():
                found.append((p, None))
            elif p.is_symlink():  # a broken link or a loop: reported, not skipped
                found.append((p, _link_problem(p)))
    return found


def _expand(item: Path) -> list[tuple[Path, Path, tuple[str, str] | None]]:
    """(root, path, problem) for one input given on the command line."""
    loop = _link_problem(item)
    if loop is not None and loop[0] == "symlink-loop":
        return [(item.parent, item, loop)]
    if item.is_dir() and not _is_dicom_dir(item):
        found = [(item, p, why) for p, why in _walk(item)]
        if found:
            return found
        if item.suffix.lower() in SLIDE_EXTENSIONS:
            why = "a folder, not a slide file (and not a DICOM WSI folder: it holds no .dcm files)"
            return [(item.parent, item, ("not-a-slide", why))]
        exts = " ".join(SLIDE_EXTENSIONS)
        why = f"a folder with no slide files in it (looked for {exts} and DICOM folders)"
        return [(item.parent, item, ("no-slides", why))]
    return [(item.parent, item, None)]


def _real(p: Path) -> str:
    try:
        return os.path.realpath(p)
    except (OSError, RuntimeError):  # pragma: no cover - realpath is not strict
        return os.path.abspath(p)


def _parts(rel: Path) -> list[str]:
    return [id_component(x) for x in rel.parts]


def assign_ids(entries: list[tuple[Path, Path]], keep_suffix: bool = True) -> list[str]:
    """Ids for ``(root, path)`` pairs by the module's rule (same order as ``entries``);
    ``keep_suffix`` False drops the extension in rule 2 too (imported h5 files)."""
    stems = [id_component(Path(p.name).stem) for _, p in entries]
    count = Counter(stems)
    ids = list(stems)
    rel = {}
    for i, (root, path) in enumerate(entries):
        if count[stems[i]] > 1:
            r = Path(os.path.relpath(path, root)) if path != root else Path(path.name)
            parts = _parts(r)
            if not keep_suffix:
                parts[-1] = id_component(Path(r.name).stem)
            rel[i] = parts
            ids[i] = "/".join(parts)
    groups = defaultdict(list)
    for i in rel:
        groups[ids[i]].append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        # rule 3: prefix with the fewest last names of the input folder's absolute path that no
        # other member's input folder shares
        roots = {
            i: [id_component(x) for x in Path(_real(entries[i][0])).parts[1:]] for i in members
        }
        for i in members:
            k = 1
            while k < len(roots[i]) and any(
                roots[j][-k:] == roots[i][-k:] for j in members if j != i
            ):
                k += 1
            ids[i] = "/".join(roots[i][-k:] + rel[i])
    # rule 4: whatever still collides, numbered by absolute path
    by_id = defaultdict(list)
    for i, s in enumerate(ids):
        by_id[s].append(i)
    taken = set(ids)
    for s, members in by_id.items():
        if len(members) < 2:
            continue
        members.sort(key=lambda i: _real(entries[i][1]))
        n = 2
        for i in members[1:]:
            while f"{s}~{n}" in taken:
                n += 1
            ids[i] = f"{s}~{n}"
            taken.add(ids[i])
    return ids


def discover_slides(inputs: list[str | Path]) -> list[SlideRef]:
    """Expand files and folders (recursively) into slides, sorted by id, ids unique, relative
    and stable (rule in the module docstring). Files given directly are taken whatever their
    extension (so an unsupported one is reported, not silently skipped); an input that cannot
    be a slide (a link loop, a folder without slides) comes back with its ``problem``."""
    found = []
    for item in inputs:
        found.extend(_expand(Path(item)))

    # one entry per file: the outermost root wins, whatever the order of the inputs
    def outer(entry) -> tuple[int, str]:
        return len(Path(_real(entry[0])).parts), _real(entry[0])

    best: dict[str, tuple[Path, Path, tuple[str, str] | None]] = {}
    for entry in found:
        key = _real(entry[1])
        if key not in best or outer(entry) < outer(best[key]):
            best[key] = entry
    entries = sorted(best.values(), key=lambda e: _real(e[1]))
    ids = assign_ids([(r, p) for r, p, _ in entries])
    refs = [SlideRef(sid, p, why) for sid, (_, p, why) in zip(ids, entries, strict=True)]
    return sorted(refs, key=lambda r: r.slide_id)
