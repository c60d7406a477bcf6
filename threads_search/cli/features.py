"""The ``features`` command (slides → one h5 of patch features per slide, or adopted
TRIDENT/CLAM h5 files) and ``encoders`` (the registered encoders). Heavy modules are imported
when a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from threads_search.cli.errors import add_command


def features(
    slides: list[Path] = typer.Argument(
        None, help="Slide files and/or folders (searched recursively)."
    ),
    out: Path = typer.Option(
        ..., "--out", help="FEATURES_DIR to write (h5/, thumbnails/, contours/, status.parquet)."
    ),
    patch_encoder: str = typer.Option(
        "hed-texture",
        "--patch-encoder",
        help="Registered encoder name (see `threads-search encoders`).",
    ),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        help="Local weights file for pretrained encoders (nothing is downloaded).",
    ),
    target_mpp: float = typer.Option(
        None, "--target-mpp", help="Patch resolution in µm/px [default: the encoder's, 0.5 = 20x]."
    ),
    patch_size: int = typer.Option(
        None, "--patch-size", help="Patch side in px at --target-mpp [default: the encoder's, 512]."
    ),
    mpp_csv: Path = typer.Option(
        None, "--mpp-csv", help="CSV 'slide,mpp' overriding the files' resolution."
    ),
    mpp: float = typer.Option(
        None, "--mpp", help="One µm/px for every slide (overrides the files)."
    ),
    min_tissue: float = typer.Option(
        0.25, "--min-tissue", help="Keep patches with at least this tissue fraction."
    ),
    max_upsample: float = typer.Option(
        None,
        "--max-upsample",
        help="Refuse slides whose µm/px is coarser than --target-mpp by more than this factor "
        "(their patches would be blown up) [default: 2].",
    ),
    ink_removal: bool = typer.Option(
        None,
        "--ink-removal/--no-ink-removal",
        help="Remove green/cyan/blue marker ink on glass; ink on tissue stays tissue [default: on].",
    ),
    ink_red_excess: float = typer.Option(
        None,
        "--ink-red-excess",
        help="Stain-separation red excess above which a pixel is ink (dense haematoxylin is about "
        "0.08, blue pen 0.2, green dye 0.4) [default: 0.15].",
    ),
    min_saturation: float = typer.Option(
        None, "--min-saturation", help="Floor of the tissue saturation threshold [default: 0.05]."
    ),
    max_saturation: float = typer.Option(
        None,
        "--max-saturation",
        help="Ceiling of the tissue saturation threshold (keeps pale tissue) [default: 0.15].",
    ),
    min_od: float = typer.Option(
        None,
        "--min-od",
        help="Optical density (sum of R, G, B over the glass) tissue needs; pink haze on glass "
        "stays below [default: 0.12].",
    ),
    min_tissue_area: float = typer.Option(
        None,
        "--min-tissue-area-mm2",
        help="Drop tissue pieces smaller than this (unless next to a larger one) [default: 0.02].",
    ),
    max_hole_area: float = typer.Option(
        None, "--max-hole-area-mm2", help="Fill holes in tissue up to this area [default: 0.5]."
    ),
    workers: int = typer.Option(
        2, "--workers", min=0, help="Reader processes (0 = read in this process)."
    ),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    dtype: Literal["float32", "float16"] = typer.Option(
        "float32", "--dtype", help="Features on disk as float32 or float16."
    ),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Redo slides that failed before."
    ),
    import_h5: Path = typer.Option(
        None,
        "--import-h5",
        help="Adopt TRIDENT/CLAM h5 files from this folder instead of reading slides.",
    ),
    level0_mpp: float = typer.Option(
        None, "--level0-mpp", help="With --import-h5: µm/px of the scans when the files lack it."
    ),
    stain_normalize: Literal["none", "macenko", "reinhard"] = typer.Option(
        "none",
        "--stain-normalize",
        help="Normalise each slide's H&E colours to a reference before encoding, so that "
        "slides from other labs and scanners give comparable features (search by tissue, not "
        "by stain). macenko: maps the slide's haematoxylin and eosin stain vectors and "
        "intensities onto the reference's (a stain model); reinhard: matches the mean and "
        "spread of each LAB colour channel (simpler, no stain model). Fitted once per slide on "
        "the tissue of a few of its patches (--stain-sample-patches), then applied to every "
        "patch; glass stays white; a slide with too little tissue colour to fit is left as "
        "scanned and said so. Use it for archives mixing sites or scanners; the model "
        "remembers it, and its index and queries use the same setting. Cost: about 16 patch "
        "reads per slide plus a few ms per patch (see bench/features.py). Changes the "
        "features: use a new --out folder.",
    ),
    stain_reference: str = typer.Option(
        None,
        "--stain-reference",
        help="With --stain-normalize: the colours to normalise to, an image file "
        "(png/jpg/tif) or a slide region SLIDE_PATH:x,y,w,h (level-0 px), mostly covered by "
        "well-stained tissue [default: built in: torchstain's Macenko reference; for reinhard "
        "the LAB statistics of a real H&E tile].",
    ),
    stain_sample_patches: int = typer.Option(
        16,
        "--stain-sample-patches",
        min=1,
        help="With --stain-normalize: tissue patches per slide the stain fit uses.",
    ),
    stain_views: int = typer.Option(
        0,
        "--stain-views",
        min=0,
        max=16,
        help="Stain augmentation for training: N more feature copies per slide, each encoded "
        "from the patches re-stained with a random stain look (the slide's haematoxylin and "
        "eosin vectors turned by up to 20 degrees and their intensities scaled by up to x1.5, "
        "times --stain-jitter), stored in its h5 as features_views. `train` then swaps a "
        "training bag for one of its views at random (--stain-view-p), so the model cannot "
        "learn a site's stain as a shortcut to the diagnosis. Use it on the slides you train "
        "on; the index and searches never use the views. Costs N+1 times the encoding time.",
    ),
    stain_jitter: float = typer.Option(
        1.0,
        "--stain-jitter",
        min=0.01,
        max=3.0,
        help="With --stain-views: strength of the random stain looks (1: turns of up to 20 "
        "degrees, intensities x0.67-1.49).",
    ),
) -> None:
    """Segment tissue, cut patches and encode them: one TRIDENT/CLAM-compatible h5 per slide.

    Re-running skips slides already done with the same settings; a slide that cannot be read is
    recorded as failed in status.parquet with its reason and the others complete. Exit code 1
    when any slide failed.

    Example: threads-search features slides/ --out feats/ --workers 2
    """
    from rich.console import Console

    from threads_search.features import default_config
    from threads_search.features.progress import FeaturesProgress
    from threads_search.features.report import print_outcomes
    from threads_search.patch_encoders import list_patch_encoders
    from threads_search.wsi.mpp import check_override
    from threads_search.wsi.plan import apply_options
    from threads_search.wsi.stain_norm import StainConfig

    if patch_encoder not in list_patch_encoders():
        known = ", ".join(list_patch_encoders())
        raise typer.BadParameter(
            f"unknown patch encoder {patch_encoder!r}; available: {known}",
            param_hint="--patch-encoder",
        )
    if import_h5 is None and not slides:
        raise typer.BadParameter("give slide files or folders (or --import-h5 DIR)")
    if import_h5 is not None and stain_views:
        raise typer.BadParameter(
            "--import-h5 adopts features made elsewhere, without their patches: stain views "
            "cannot be made from them; drop --stain-views",
            param_hint="--stain-views",
        )
    if import_h5 is not None and stain_normalize != "none":
        raise typer.BadParameter(
            "--import-h5 adopts features made elsewhere, whose patches cannot be normalised "
            "now; drop --stain-normalize, or run the features stage on the slides",
            param_hint="--stain-normalize",
        )
    console = Console(stderr=True)
    cfg = default_config(
        patch_encoder,
        patch_size,
        target_mpp,
        checkpoint=str(checkpoint) if checkpoint else None,
        dtype=dtype,
        batch_size=batch_size,
        workers=workers,
        device=device,
        stain=StainConfig(stain_normalize, stain_reference, stain_sample_patches),
        stain_views=stain_views,
        stain_jitter=stain_jitter,
    )
    cfg.segment = apply_options(
        cfg.segment,
        min_tissue=min_tissue,
        max_upsample=max_upsample,
        exclude_ink=ink_removal,
        ink_red_excess=ink_red_excess,
        min_od=min_od,
        min_saturation=min_saturation,
        max_saturation=max_saturation,
        min_area_mm2=min_tissue_area,
        max_hole_area_mm2=max_hole_area,
    )
    if mpp is not None:
        check_override(mpp, "--mpp")
    if import_h5 is not None:
        from threads_search.features.importer import ImportParams
        from threads_search.features.importer import import_h5 as run_import

        outcomes = run_import(import_h5, out, cfg, ImportParams(level0_mpp))
    else:
        from threads_search.features import extract_features

        with FeaturesProgress(console) as progress:
            outcomes = extract_features(
                slides,
                out,
                cfg,
                mpp_csv=mpp_csv,
                mpp=mpp,
                retry_failed=retry_failed,
                progress=progress,
            )
    failed = print_outcomes(outcomes, console, imported=import_h5 is not None)
    raise typer.Exit(1 if failed else 0)


def encoders() -> None:
    """List the registered encoders (patch, slide, molecular) and what they expect."""
    from rich.console import Console
    from rich.table import Table

    from threads_search.patch_encoders import get_patch_encoder_spec, list_patch_encoders

    table = Table(title="patch encoders")
    for col in ("name", "dim", "patch px @ µm/px", "input px", "weights", "licence"):
        table.add_column(col)
    for name in list_patch_encoders():
        s = get_patch_encoder_spec(name)
        weights = ", ".join(s.checkpoint_files) if s.needs_checkpoint else "built in"
        row = [name, str(s.dim), f"{s.patch_size} @ {s.target_mpp}", str(s.input_size)]
        table.add_row(*row, weights, s.licence)
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add ``features`` and ``encoders`` to the Typer ``app``."""
    add_command(app, features)
    add_command(app, encoders)
