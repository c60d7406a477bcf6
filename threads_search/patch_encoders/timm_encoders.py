"""Pretrained patch encoders built with timm; weights come only from a local checkpoint file.

Registered: ``conch_v15``, ``uni``, ``uni2-h``, ``virchow2``, ``h-optimus-0``, ``resnet50-trunc``
(architectures, transforms and file names per ``ENCODERS.md``). Nothing is ever downloaded:
timm models are built with ``pretrained=False`` and filled from ``checkpoint``.

Every factory takes ``checkpoint=None, device="auto", batch_size=64, depth=None,
random_weights=False``; ``depth`` builds a shallower network and ``random_weights`` skips the
checkpoint (both for tests and smoke runs only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from threads_search.device import resolve_device
from threads_search.errors import ConfigError
from threads_search.patch_encoders import PATCH_ENCODERS
from threads_search.patch_encoders.base import PatchEncoder, PatchEncoderSpec
from threads_search.patch_encoders.checkpoint import CheckpointError, load_strict, read_state_dict

HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)
_MMRI = (
    "CC-BY-NC-ND-4.0 (gated on Hugging Face: accept the terms; non-commercial, no redistribution)"
)


# ---------------------------------------------------------------------------------------------
# The encoder


@dataclass(frozen=True)
class Transform:
    """Resize the shorter side to ``size`` px (``interpolation``, antialiased, as PIL does), then
    optionally centre-crop ``size`` x ``size``; scale to [0, 1]; normalise with the spec."""

    size: int
    interpolation: str = "bilinear"  # bilinear | bicubic
    crop: bool = True


class TorchPatchEncoder(PatchEncoder):
    """A torch module in eval mode on ``device``; ``head(model, x)`` maps ``[B, 3, S, S]`` →
    ``[B, dim]`` (default: ``model(x)``). ``model.state_dict()`` has the checkpoint's layout."""

    def __init__(
        self,
        spec: PatchEncoderSpec,
        model,
        transform: Transform,
        device: str = "auto",
        batch_size: int = 64,
        head: Callable | None = None,
    ) -> None:
        import torch

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.spec = spec
        self.transform = transform
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.head = head
        self.model = model.eval().to(self.device)
        amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(spec.precision)
        self.amp_dtype = amp if self.device.startswith("cuda") else None

    def preprocess(self, patches):
        """uint8 ``[B, H, W, 3]`` (numpy or torch) → normalised float32 ``[B, 3, S, S]``."""
        import torch
        import torch.nn.functional as F

        x = torch.as_tensor(patches)
        if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != torch.uint8:
            raise ValueError(
                f"{self.spec.name}: patches must be uint8 [B, H, W, 3], "
                f"got {x.dtype} {tuple(x.shape)}"
            )
        x = x.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
        t = self.transform
        h, w = x.shape[-2:]
        if min(h, w) != t.size:
            scale = t.size / min(h, w)
            new = (t.size, int(w * scale)) if h <= w else (int(h * scale), t.size)
            x = F.interpolate(
                x, size=new, mode=t.interpolation, align_corners=False, antialias=True
            )
            x = x.clamp_(0.0, 1.0)  # bicubic overshoot; PIL clips to uint8 range
        if t.crop:
            h, w = x.shape[-2:]
            top, left = (h - t.size) // 2, (w - t.size) // 2
            x = x[..., top : top + t.size, left : left + t.size]
        mean = torch.tensor(self.spec.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=x.device).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    def encode(self, patches) -> np.ndarray:
        """uint8 ``[B, H, W, 3]`` → float32 ``[B, dim]``, in chunks of ``batch_size``."""
        import torch

        n = len(patches)
        if n == 0:
            return np.zeros((0, self.spec.dim), np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, n, self.batch_size):
                x = self.preprocess(patches[i : i + self.batch_size])
                with torch.autocast(
                    "cuda",
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ):
                    y = self.model(x) if self.head is None else self.head(self.model, x)
                out.append(y.float().cpu().numpy())
        feats = np.concatenate(out)
        if feats.shape != (n, self.spec.dim):
            raise RuntimeError(
                f"{self.spec.name}: got features {feats.shape}, expected {(n, self.spec.dim)}"
            )
        return feats


# ---------------------------------------------------------------------------------------------
# Specs and models

SPECS = {
    s.name: s
    for s in [
        PatchEncoderSpec(
            name="conch_v15",
            dim=768,
            input_size=448,
            patch_size=512,
            precision="fp16",
            needs_checkpoint=True,
            checkpoint_files=("pytorch_model_vision.bin", "conch_v1_5_pytorch_model.bin"),
            source="Hugging Face MahmoodLab/conchv1_5 (pytorch_model_vision.bin) "
            "or MahmoodLab/TITAN (conch_v1_5_pytorch_model.bin)",
            licence=_MMRI,
        ),
        PatchEncoderSpec(
            name="uni",
            dim=1024,
            input_size=224,
            patch_size=256,
            precision="fp16",
            needs_checkpoint=True,
            checkpoint_files=("pytorch_model.bin",),
            source="Hugging Face MahmoodLab/UNI",
            licence=_MMRI,
        ),
        PatchEncoderSpec(
            name="uni2-h",
            dim=1536,
            input_size=224,
            patch_size=256,
            precision="bf16",
            needs_checkpoint=True,
            checkpoint_files=("pytorch_model.bin",),
            source="Hugging Face MahmoodLab/UNI2-h",
            licence=_MMRI,
        ),
        PatchEncoderSpec(
            name="virchow2",
            dim=2560,
            input_size=224,
            patch_size=224,
            precision="fp16",
            needs_checkpoint=True,
            checkpoint_files=("pytorch_model.bin",),
            source="Hugging Face paige-ai/Virchow2",
            licence="CC-BY-NC-ND-4.0 (gated on Hugging Face: accept the terms; non-commercial)",
        ),
        PatchEncoderSpec(
            name="h-optimus-0",
            dim=1536,
            input_size=224,
            patch_size=224,
            precision="fp16",
            mean=HOPTIMUS_MEAN,
            std=HOPTIMUS_STD,
            needs_checkpoint=True,
            checkpoint_files=("pytorch_model.bin",),
            source="Hugging Face bioptimus/H-optimus-0",
            licence="Apache-2.0",
        ),
        PatchEncoderSpec(
            name="resnet50-trunc",
            dim=1024,
            input_size=224,
            patch_size=256,
            precision="fp32",
            needs_checkpoint=True,
            checkpoint_files=("model.safetensors", "pytorch_model.bin"),
            source="Hugging Face timm/resnet50.tv_in1k (torchvision ImageNet ResNet-50)",
            licence="BSD-3-Clause (timm model card; torchvision ImageNet weights)",
        ),
    ]
}


def _vit(arch: str, depth: int | None, **kwargs):
    import timm

    if depth is not None:
        kwargs["depth"] = depth
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def _swiglu():
    import torch
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": torch.nn.SiLU}


def _conch(depth):
    from threads_search.patch_encoders.conch import ConchVisionTower

    return ConchVisionTower(depth=24 if depth is None else depth)


def _uni(depth):
    return _vit(
        "vit_large_patch16_224",
        depth,
        img_size=224,
        patch_size=16,
        init_values=1e-5,
        dynamic_img_size=True,
    )


def _uni2h(depth):
    return _vit(
        "vit_giant_patch14_224",
        24 if depth is None else depth,
        img_size=224,
        patch_size=14,
        num_heads=24,
        init_values=1e-5,
        embed_dim=1536,
        mlp_ratio=2.66667 * 2,
        no_embed_class=True,
        reg_tokens=8,
        dynamic_img_size=True,
        **_swiglu(),
    )


def _virchow2(depth):
    return _vit(
        "vit_huge_patch14_224",
        depth,
        img_size=224,
        init_values=1e-5,
        reg_tokens=4,
        mlp_ratio=5.3375,
        global_pool="",
        dynamic_img_size=True,
        **_swiglu(),
    )


def _virchow2_head(vit, x):
    """Tokens ``[B, 1 + 4 + N, 1280]`` → ``[B, 2560]`` = concat(CLS, mean of patch tokens)."""
    import torch

    t = vit.forward_features(x)
    return torch.cat([t[:, 0], t[:, vit.num_prefix_tokens :].mean(1)], dim=-1)


def _hoptimus0(depth):
    return _vit(
        "vit_giant_patch14_reg4_dinov2",
        depth,
        img_size=224,
        global_pool="token",
        init_values=1e-5,
        dynamic_img_size=True,
    )


def _resnet50_trunc(depth):
    import timm

    kwargs = {} if depth is None else {"layers": tuple(min(n, depth) for n in (3, 4, 6, 3))}
    return timm.create_model(
        "resnet50", pretrained=False, features_only=True, out_indices=(3,), **kwargs
    )


def _resnet50_trunc_head(net, x):
    """layer3 map ``[B, 1024, S/16, S/16]`` → global average ``[B, 1024]``."""
    return net(x)[-1].mean(dim=(2, 3))


@dataclass(frozen=True)
class _Recipe:
    build: Callable  # depth | None -> torch module whose state_dict matches the checkpoint
    transform: Transform
    head: Callable | None = None
    strip: tuple[str, ...] = ("module.", "model.")
    drop: tuple[str, ...] = ()  # key prefixes removed before the strict load


RECIPES = {
    "conch_v15": _Recipe(_conch, Transform(448), strip=("module.", "model.", "visual.")),
    "uni": _Recipe(_uni, Transform(224)),
    "uni2-h": _Recipe(_uni2h, Transform(224)),
    "virchow2": _Recipe(_virchow2, Transform(224, "bicubic", crop=False), head=_virchow2_head),
    "h-optimus-0": _Recipe(_hoptimus0, Transform(224, crop=False)),
    "resnet50-trunc": _Recipe(
        _resnet50_trunc, Transform(224), head=_resnet50_trunc_head, drop=("layer4.", "fc.")
    ),
}


def missing_checkpoint_message(spec: PatchEncoderSpec) -> str:
    files = " or ".join(spec.checkpoint_files)
    return (
        f"patch encoder {spec.name!r} needs its pretrained weights: pass checkpoint=PATH "
        f"(CLI: --checkpoint PATH) to a local copy of {files} from {spec.source}. "
        f"Licence: {spec.licence}. threads-search never downloads weights."
    )


def build_pretrained(
    name: str,
    checkpoint=None,
    device: str = "auto",
    batch_size: int = 64,
    depth: int | None = None,
    random_weights: bool = False,
) -> TorchPatchEncoder:
    """Build encoder ``name`` and load ``checkpoint`` strictly (see the module docstring)."""
    spec, recipe = SPECS[name], RECIPES[name]
    if random_weights and checkpoint is not None:
        raise ConfigError(f"{name}: give either checkpoint or random_weights=True, not both")
    state = None
    if not random_weights:
        if checkpoint is None:
            raise CheckpointError(missing_checkpoint_message(spec))
        state = read_state_dict(checkpoint, recipe.strip)
        if recipe.drop:
            state = {k: v for k, v in state.items() if not k.startswith(recipe.drop)}
    if state is None:
        model = recipe.build(depth)
    else:  # no random initialisation: build on the meta device, then take the file's tensors
        import torch

        with torch.device("meta"):
            model = recipe.build(depth)
        load_strict(model, state, checkpoint, name)
    return TorchPatchEncoder(spec, model, recipe.transform, device, batch_size, recipe.head)


def _register(name: str) -> None:
    def factory(checkpoint=None, device="auto", batch_size=64, depth=None, random_weights=False):
        return build_pretrained(name, checkpoint, device, batch_size, depth, random_weights)

    factory.__name__ = f"create_{name.replace('-', '_')}"
    factory.__doc__ = f"{SPECS[name].name}: {SPECS[name].dim}-d features; see build_pretrained."
    PATCH_ENCODERS.register(name, info=SPECS[name])(factory)


for _name in SPECS:
    _register(_name)
