"""The patch-encoder contract shared by every registered encoder."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from threads_search.registry import UnknownNameError


class UnknownPatchEncoderError(UnknownNameError):
    """A patch-encoder name that is not registered; the message lists the registered ones (a
    ``KeyError`` and a ``ValueError`` too, for callers of earlier versions)."""


@dataclass(frozen=True)
class PatchEncoderSpec:
    """Static facts about a patch encoder.

    ``patch_size`` px at ``target_mpp`` µm/px is what the features stage extracts; ``input_size`` px
    is what the network sees after resizing. ``mean``/``std`` normalise [0, 1] RGB.
    """

    name: str
    dim: int
    input_size: int
    patch_size: int = 512
    target_mpp: float = 0.5
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    precision: str = "fp32"  # autocast dtype on GPU: fp32 | fp16 | bf16
    needs_checkpoint: bool = False
    checkpoint_files: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""
    licence: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class PatchEncoder:
    """Maps a batch of RGB patches to feature vectors.

    ``encode(patches)``: ``patches`` is uint8 ``[B, H, W, 3]`` (numpy or torch), any H = W;
    returns float32 ``[B, spec.dim]`` numpy. ``cpu_per_patch`` encoders (no torch model) may be
    run inside reader worker processes through ``encode_one``.
    """

    spec: PatchEncoderSpec
    cpu_per_patch: bool = False
    device: str = "cpu"

    def encode(self, patches) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode_one(self, patch: np.ndarray) -> np.ndarray:
        """One uint8 ``[H, W, 3]`` patch → float32 ``[dim]``."""
        return self.encode(patch[None])[0]
