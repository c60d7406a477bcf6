"""``threads-search demo``: the main job on generated data, start to end."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from threads_search.synth import make_archive, write_broken_slides
from threads_search.wsi import SlideError, discover_slides
from threads_search.wsi.segment import plan_slide
from threads_search.wsi.tissue import write_geojson, write_thumbnail_jpeg


def segment_archive(slides_dir: Path, out_dir: Path, console: Console) -> list[dict]:
    """Tissue detection + patch grid for every slide under ``slides_dir``; thumbnails and
    GeoJSON contours go to ``out_dir``. One row per slide; failures are rows too."""
    from rich.progress import track

    rows = []
    refs = discover_slides([slides_dir])
    for ref in track(refs, description="segmenting", console=console, transient=True):
        try:
            plan = plan_slide(ref.path, ref.slide_id)
        except SlideError as e:
            rows.append(
                {"slide_id": ref.slide_id, "state": "failed", "error": f"{e.reason}: {e.detail}"}
            )
            continue
        write_thumbnail_jpeg(
            plan.thumb, plan.tissue, out_dir / "thumbnails" / f"{ref.slide_id}.jpg"
        )
        write_geojson(plan.tissue, ref.slide_id, out_dir / "contours" / f"{ref.slide_id}.geojson")
        s = plan.summary
        rows.append({
            "slide_id": ref.slide_id, "state": "done", "vendor": s["vendor"],
            "size": f"{s['width']}x{s['height']}", "levels": s["level_count"],
            "mpp": f"{s['mpp']:.3g} ({s['mpp_source']})", "tissue_mm2": plan.tissue.area_mm2,
            "patches": len(plan.coords),
        })  # fmt: skip
    return rows


def print_segmentation(rows: list[dict], console: Console) -> None:
    table = Table(title="Slides: tissue and 512 px @ 0.5 µm/px patch grid")
    right = ("levels", "tissue mm²", "patches")
    for col in ("slide", "vendor", "size (px)", "levels", "µm/px (source)", "tissue mm²", "patches"):
        table.add_column(col, justify="right" if col in right else "left")
    for r in rows:
        if r["state"] == "done":
            table.add_row(r["slide_id"], r["vendor"], r["size"], str(r["levels"]), r["mpp"],
                          f"{r['tissue_mm2']:.2f}", str(r["patches"]))  # fmt: skip
    console.print(table)
    failed = [r for r in rows if r["state"] != "done"]
    if failed:
        bad = Table(title="Slides that could not be used")
        bad.add_column("slide", no_wrap=True)
        bad.add_column("reason")
        for r in failed:
            bad.add_row(r["slide_id"], r["error"])
        console.print(bad)


def run_demo(out: Path, n_slides: int = 4, console: Console | None = None) -> list[dict]:
    """Write a small synthetic archive (plus deliberately broken files) and segment it."""
    console = console or Console()
    slides_dir = out / "slides"
    console.print(f"[bold]1/2[/bold] writing {n_slides} synthetic slides to {slides_dir}")
    make_archive(slides_dir, n_slides=n_slides, width=4096, height=3072, mpp=0.25, seed=7)
    write_broken_slides(slides_dir / "broken")
    console.print("[bold]2/2[/bold] tissue detection and patch grid")
    rows = segment_archive(slides_dir, out / "segmentation", console)
    print_segmentation(rows, console)
    ok = sum(r["state"] == "done" for r in rows)
    console.print(
        f"{ok} slides segmented, {len(rows) - ok} failed as expected (the broken/ files are "
        f"deliberately unreadable). Thumbnails and QuPath GeoJSON: {out / 'segmentation'}"
    )
    return rows
