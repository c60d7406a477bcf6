"""Reading weight files (``.safetensors``, torch pickles) and loading them strictly, with errors
that name the file and the offending keys. Nothing here reaches the network."""

from __future__ import annotations

from pathlib import Path

from threads_search.errors import InputError, MissingError


class CheckpointError(InputError):
    """A checkpoint is missing, unreadable or does not match the encoder's architecture (a
    ``ValueError`` too; a file that is not there is a ``MissingError``)."""


def read_state_dict(path, strip_prefixes: tuple[str, ...] = ("module.", "model.")) -> dict:
    """Tensors of a ``.safetensors`` or ``.bin``/``.pt``/``.pth``/``.ckpt`` file (CPU).

    A state dict nested under ``state_dict``/``model`` is unwrapped; a prefix of
    ``strip_prefixes`` shared by every key is removed (repeatedly, in any order).
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingError(
            f"checkpoint file {path} does not exist; give the path of a local copy of the weights"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        elif suffix in (".bin", ".pt", ".pth", ".ckpt"):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise CheckpointError(
                f"checkpoint {path}: unknown file type {suffix!r}; "
                "use .safetensors or a torch state dict (.bin, .pt, .pth)"
            )
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt file, pickled module objects (weights_only), ...
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc

    while isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next(
            (obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)), None
        )
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:8]))
            raise CheckpointError(f"checkpoint {path} holds no state dict (top-level keys: {keys})")
        obj = inner
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"checkpoint {path} holds no tensors")

    changed = True
    while changed:
        changed = False
        for prefix in strip_prefixes:
            if all(k.startswith(prefix) for k in obj):
                obj = {k[len(prefix) :]: v for k, v in obj.items()}
                changed = True
    return obj


def load_strict(module, state: dict, path, encoder: str) -> None:
    """Load ``state`` into ``module`` strictly; on mismatch raise :class:`CheckpointError` naming
    the file and a few missing, unexpected and wrongly shaped keys.

    A ViT ``pos_embed`` stored for another grid is resampled to the module's grid first. The
    tensors are assigned (cast to the module's dtypes), so ``module`` may live on the meta device.
    """
    expected = module.state_dict()
    state = _resample_pos_embed(module, dict(state))
    missing = [
        k for k in expected if k not in state and not k.endswith("num_batches_tracked")
    ]  # BatchNorm fills a missing counter itself
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {tuple(state[k].shape)} in file vs {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        lines = [f"checkpoint {path} does not match patch encoder {encoder!r}:"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if items:
                more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
                lines.append(f"  {len(items)} {label} keys: {', '.join(items[:5])}{more}")
        raise CheckpointError("\n".join(lines))
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    unset = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if unset:
        raise CheckpointError(f"checkpoint {path} left {encoder!r} tensors unset: {unset[:5]}")


def _resample_pos_embed(module, state: dict) -> dict:
    vit = getattr(module, "trunk", module)
    pos = state.get("pos_embed") if vit is module else state.get("trunk.pos_embed")
    ref = getattr(vit, "pos_embed", None)
    if pos is None or ref is None or pos.shape == ref.shape or pos.ndim != 3:
        return state
    if pos.shape[-1] != ref.shape[-1]:
        return state  # a different model: reported as a shape mismatch
    from timm.layers import resample_abs_pos_embed

    n_prefix = 0 if getattr(vit, "no_embed_class", False) else vit.num_prefix_tokens
    pos = resample_abs_pos_embed(
        pos, new_size=list(vit.patch_embed.grid_size), num_prefix_tokens=n_prefix
    )
    state["pos_embed" if vit is module else "trunk.pos_embed"] = pos
    return state
