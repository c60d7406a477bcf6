"""Find slides in files and folders and give each a stable ``slide_id``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SLIDE_EXTENSIONS = (
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif",
)  # fmt: skip


@dataclass(frozen=True)
class SlideRef:
    """A slide to process: ``path`` (file, or folder for DICOM WSI) and its ``slide_id``."""

    slide_id: str
    path: Path


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue  # hidden files and folders (temporary writes)
        if (
            p.is_file()
            and p.suffix.lower() in SLIDE_EXTENSIONS
            or p.is_dir()
            and any(p.glob("*.dcm"))
        ):
            found.append(p)
    return found


def discover_slides(inputs: list[str | Path]) -> list[SlideRef]:
    """Expand files and folders (recursively) into slides, sorted, ids unique.

    ``slide_id`` is the file's stem; where two stems collide, the path relative to the folder
    that was given (the archive root), with ``/`` separators. Files given directly are taken
    whatever their extension (so an unsupported one is reported, not silently skipped).
    """
    pairs: list[tuple[Path, Path]] = []  # (root, path)
    for item in inputs:
        p = Path(item)
        if p.is_dir() and not any(p.glob("*.dcm")):
            pairs.extend((p, f) for f in _walk(p))
        else:
            pairs.append((p.parent, p))
    seen: set[Path] = set()
    unique = []
    for root, path in pairs:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((root, path))
    stems = Counter(path.stem for _, path in unique)
    refs = []
    for root, path in unique:
        if stems[path.stem] == 1:
            sid = path.stem
        else:
            sid = path.relative_to(root).as_posix() if path != root else path.name
        refs.append(SlideRef(sid, path))
    ids = Counter(r.slide_id for r in refs)
    dupes = [i for i, n in ids.items() if n > 1]
    if dupes:
        refs = [SlideRef(str(r.path.resolve()), r.path) if r.slide_id in dupes else r for r in refs]
    return sorted(refs, key=lambda r: r.slide_id)
