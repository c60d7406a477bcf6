"""How the pairs table meets the features and the profiles: the matching report and id hints.

Real archives rarely match perfectly: a pairs table lists slides whose features failed or were
never computed, samples without a profile, and ids spelled differently from the files (``.svs``
kept, another case, a patient barcode where a slide id belongs). Training runs on what matches;
the report says how much that is and what did not match, so a mostly unmatched cohort is seen,
not trained on silently. The report is a JSON-ready dict (saved in the bundle's training
params as ``data``); :func:`format_report` renders it for the terminal.
"""

from __future__ import annotations

import bisect
import re

import pandas as pd

N_EXAMPLES = 5
_EXT = re.compile(r"\.(svs|tif|tiff|ndpi|mrxs|scn|bif|vms|vmu|dcm|svslide|h5|jpg|png)$", re.I)


def _examples(ids, n: int = N_EXAMPLES) -> dict:
    ids = sorted({str(i) for i in ids})
    return {"count": len(ids), "examples": ids[:n]}


def _show(part: dict) -> str:
    more = f", … ({part['count']} in all)" if part["count"] > len(part["examples"]) else ""
    return ", ".join(repr(x) for x in part["examples"]) + more


def _norm(i: str) -> str:
    return _EXT.sub("", i.replace("\\", "/").rsplit("/", 1)[-1]).strip().lower()


def id_hint(unmatched, available, what: str, where: str, mostly: bool = True) -> str | None:
    """Why ids named in the pairs (``unmatched``) may miss ``available`` ones, or None.

    Checks, in order: the same ids once case, folders and slide-file extensions are ignored;
    ids that are a prefix of available ones or the reverse (a patient barcode where a slide id
    belongs); else, when ``mostly`` (most ids unmatched), both sides' ids side by side."""
    unmatched, available = sorted(set(map(str, unmatched))), sorted(set(map(str, available)))
    if not unmatched or not available:
        return None
    norm = {_norm(a): a for a in available}
    same = [(u, norm[_norm(u)]) for u in unmatched if _norm(u) in norm]
    if same:
        u, a = same[0]
        return (
            f"{len(same)} {what} match {where} once case, folders and file extensions are "
            f"ignored (e.g. {u!r} ↔ {a!r}): write the pairs' ids exactly as {where} does"
        )
    pref = _affixed(unmatched, available)
    suff = [
        (u[::-1], a[::-1])
        for u, a in _affixed([u[::-1] for u in unmatched], sorted(a[::-1] for a in available))
    ]
    if pref or suff:
        u, a = (pref or suff)[0]
        end = "start" if pref else "end"
        return (
            f"{len(pref or suff)} {what} {end} the same as ids in {where}, one being the other "
            f"plus more (e.g. {u!r} ↔ {a!r}): a patient or sample id where a slide id belongs, "
            "or a prefix/suffix added on one side; give the pairs the exact ids"
        )
    if not mostly:
        return None
    return (
        f"{what} look like {', '.join(map(repr, unmatched[:2]))} while {where} holds "
        f"{', '.join(map(repr, available[:2]))}: the pairs table may belong to another cohort "
        "or use another naming"
    )


def _affixed(ids: list[str], available: list[str]) -> list[tuple[str, str]]:
    """(id, available id) where one is a prefix of the other; ``available`` sorted."""
    found = []
    for u in ids:
        j = bisect.bisect_left(available, u)
        if j < len(available) and available[j].startswith(u):
            found.append((u, available[j]))
            continue
        k = bisect.bisect_right(available, u) - 1
        if k >= 0 and u.startswith(available[k]):
            found.append((u, available[k]))
    return found


def match_report(
    pairs: pd.DataFrame,
    done: list[str],
    failed: list[str],
    rna_ids: set[str],
    dna_ids: set[str],
    features_dir: str,
    adopted: list[str] = (),
    unusable: dict[str, str] | None = None,
) -> dict:
    """Counts and examples of what matched: pairs (``slide_id``, ``sample_id``) against slides
    with usable features (``done``; ``failed``: features that failed; ``adopted``: h5 files
    without a status row, taken; ``unusable``: slide id → why its file or row cannot be used,
    as ``threads_search.features.reconcile`` says) and profile ids."""
    unusable = unusable or {}
    done_s, prof = set(done), rna_ids | dna_ids
    no_use = set(failed) | set(unusable)
    no_feat = ~pairs.slide_id.isin(done_s)
    no_prof = ~pairs.sample_id.isin(prof)
    miss_slides = set(pairs.slide_id[no_feat])
    miss_samples = set(pairs.sample_id[no_prof])
    paired_slides, paired_samples = set(pairs.slide_id), set(pairs.sample_id)
    slides_where = f"the features ({features_dir})"
    mostly_slides = len(miss_slides) > len(paired_slides) / 2
    mostly_samples = len(miss_samples) > len(paired_samples) / 2
    hints = [
        id_hint(
            miss_slides - no_use,
            done_s - paired_slides,
            "pairs slide ids",
            slides_where,
            mostly_slides,
        ),
        id_hint(
            miss_samples, prof - paired_samples, "pairs sample ids", "the profiles", mostly_samples
        ),
    ]
    return {
        "pairs": len(pairs),
        "pairs_matched": int((~no_feat & ~no_prof).sum()),
        "pairs_without_features": int(no_feat.sum()),
        "slides_without_features": _examples(miss_slides),
        "slides_failed_features": len(miss_slides & set(failed)),
        "slides_unusable_features": len(miss_slides & set(unusable)),
        "pairs_without_profile": int(no_prof.sum()),
        "samples_without_profile": _examples(miss_samples),
        "feature_slides": len(done_s),
        "feature_slides_unpaired": _examples(done_s - paired_slides),
        "feature_files_adopted": _examples(adopted),
        "feature_files_unusable": _unusable(unusable),
        "profile_samples": {"rna": len(rna_ids), "dna": len(dna_ids)},
        "profile_samples_unpaired": _examples(prof - paired_samples),
        "hints": [h for h in hints if h],
    }


def _unusable(reasons: dict[str, str], n: int = N_EXAMPLES) -> dict:
    part = _examples(reasons, n)
    part["reasons"] = {sid: reasons[sid] for sid in part["examples"]}
    return part


def count_items(items) -> dict:
    """Items per split and per modality: ``train``, ``train_rna``, ``train_dna``, ``val``…;
    ``held_out``: matched items of another split (test), not used in training."""
    out: dict[str, int] = {}
    for name in ("train", "val"):
        part = [it for it in items if it.split == name]
        out[name] = len(part)
        out[f"{name}_rna"] = sum(1 for it in part if it.rna)
        out[f"{name}_dna"] = sum(1 for it in part if it.dna)
    out["held_out"] = sum(1 for it in items if it.split not in ("train", "val"))
    return out


def format_report(r: dict) -> str:
    """The report as a few indented lines (counts first, examples after)."""
    n, m = r["pairs"], r["pairs_matched"]
    pct = f" ({100 * m / n:.0f} %)" if n else ""
    lines = [f"pairs: {n} slide–sample links, {m} matched{pct}"]
    if r["pairs_without_features"]:
        failed, bad = r["slides_failed_features"], r.get("slides_unusable_features", 0)
        why = f"; {failed} of these slides failed at the features stage" if failed else ""
        why += f"; {bad} have unusable features (listed below)" if bad else ""
        lines.append(
            f"  {r['pairs_without_features']} name a slide without features: "
            f"{_show(r['slides_without_features'])}{why}"
        )
    if r["pairs_without_profile"]:
        lines.append(
            f"  {r['pairs_without_profile']} name a sample without an RNA/DNA profile: "
            f"{_show(r['samples_without_profile'])}"
        )
    un = r["feature_slides_unpaired"]
    lines.append(
        f"features: {r['feature_slides']} slides, {un['count']} named in no pair"
        + (f": {_show(un)}" if un["count"] else "")
    )
    adopted = r.get("feature_files_adopted") or {"count": 0}
    if adopted["count"]:
        lines.append(
            f"  {adopted['count']} h5 file(s) without a status row adopted (made with the "
            f"folder's settings): {_show(adopted)}"
        )
    bad = r.get("feature_files_unusable") or {"count": 0}
    if bad["count"]:
        more = f" … ({bad['count']} in all)" if bad["count"] > len(bad["examples"]) else ""
        lines.append(f"  {bad['count']} unusable, not trained on:{more}")
        lines += [f"    {sid!r}: {why}" for sid, why in bad["reasons"].items()]
    un, ps = r["profile_samples_unpaired"], r["profile_samples"]
    lines.append(
        f"profiles: {ps['rna']} RNA, {ps['dna']} DNA samples, {un['count']} named in no pair"
        + (f": {_show(un)}" if un["count"] else "")
    )
    if "items" in r:
        it = r["items"]
        lines.append(
            f"items (one per {r['bag_by']}): {it['train']} train (RNA {it['train_rna']}, DNA "
            f"{it['train_dna']}), {it['val']} validation (RNA {it['val_rna']}, DNA "
            f"{it['val_dna']}), {it['held_out']} held out; split: {r['split']}"
        )
    sv = r.get("stain_views")
    if sv and sv["with_views"]:
        lines.append(
            f"stain views: {sv['with_views']} of {sv['training_slides']} training slides have "
            f"{sv['views_per_slide']} each; a slide is swapped for one with p={sv['p']}"
        )
    lines += [f"hint: {h}" for h in r["hints"]]
    if n and m < 0.5 * n:
        lines.append(f"warning: only {m} of {n} pairs matched: check the ids (see above)")
    return "\n".join(lines)
