"""Patch-encoder registry: ``create_patch_encoder(name, checkpoint=None, device="auto")``.

A name that is not registered raises ``UnknownPatchEncoderError`` (a ``ConfigError``) listing
the registered ones; a missing, unreadable or mismatched checkpoint ``CheckpointError`` (a
``MissingError`` when the file is not there)."""

from __future__ import annotations

from threads_search.patch_encoders.base import (
    PatchEncoder,
    PatchEncoderSpec,
    UnknownPatchEncoderError,
)
from threads_search.registry import Registry

PATCH_ENCODERS: Registry[PatchEncoder] = Registry("patch encoder")
# encoder name → the dimensions of its features that describe tissue rather than stain colour
TISSUE_DIMS: dict[str, tuple[int, ...]] = {}


def list_patch_encoders() -> list[str]:
    _load_builtins()
    return PATCH_ENCODERS.names()


def get_patch_encoder_spec(name: str) -> PatchEncoderSpec:
    _load_builtins()
    _check(name)
    return PATCH_ENCODERS.info(name)


def tissue_dims(name: str | None) -> tuple[int, ...] | None:
    """The dimensions of encoder ``name``'s features that describe tissue structure rather than
    stain colour, which region search compares (``vectorstore.projection``); None: all of them
    (an encoder that declares none, as the pretrained networks, whose features mix both, or a
    name not registered here, as features imported from elsewhere, or no name)."""
    _load_builtins()
    return TISSUE_DIMS.get(name)


def create_patch_encoder(
    name: str, checkpoint=None, device: str = "auto", **kwargs
) -> PatchEncoder:
    """Build the encoder ``name``; pretrained ones load weights from the local ``checkpoint`` file."""
    _load_builtins()
    _check(name)
    return PATCH_ENCODERS.create(name, checkpoint=checkpoint, device=device, **kwargs)


def _check(name: str) -> None:
    if name not in PATCH_ENCODERS:
        known = ", ".join(PATCH_ENCODERS.names()) or "(none)"
        raise UnknownPatchEncoderError(
            f"unknown patch encoder {name!r}; available: {known} (see `threads-search encoders`)"
        )


def _load_builtins() -> None:
    # Importing the modules registers their encoders.
    from threads_search.patch_encoders import hed_texture, timm_encoders  # noqa: F401


__all__ = [
    "PATCH_ENCODERS",
    "PatchEncoder",
    "PatchEncoderSpec",
    "UnknownPatchEncoderError",
    "create_patch_encoder",
    "get_patch_encoder_spec",
    "list_patch_encoders",
    "tissue_dims",
]
