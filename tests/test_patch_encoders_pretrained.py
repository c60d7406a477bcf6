"""Pretrained (checkpoint-loaded) patch encoders: build at reduced depth with random weights, save,
reload through the registry, and check outputs, resizing and checkpoint errors. No network."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from conftest import scramble_weights
from PIL import Image
from safetensors.torch import save_file

from threads_search.patch_encoders import (
    create_patch_encoder,
    get_patch_encoder_spec,
    list_patch_encoders,
)
from threads_search.patch_encoders.checkpoint import CheckpointError

PRETRAINED = [n for n in list_patch_encoders() if get_patch_encoder_spec(n).needs_checkpoint]
DEPTH = 1
B = 2


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt fails: encoders must build and load from local files only."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted by a patch encoder")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


_CACHE: dict[str, object] = {}


def _random_encoder(name: str):
    """A scrambled random-weights encoder at reduced depth, built once per name."""
    if name not in _CACHE:
        enc = create_patch_encoder(name, random_weights=True, depth=DEPTH, device="cpu")
        scramble_weights(enc.model, seed=PRETRAINED.index(name))
        _CACHE[name] = enc
    return _CACHE[name]


def _smooth_patches(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[n, size, size, 3]`` tissue-like smooth colour fields."""
    small = np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(s).resize((size, size), Image.BICUBIC)) for s in small]
    )


def _save(state: dict, path, nest_prefix: str = "") -> None:
    """``.safetensors`` flat, or ``.pt`` nested under ``state_dict`` with ``nest_prefix`` keys."""
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save({"epoch": 3, "state_dict": {nest_prefix + k: v for k, v in state.items()}}, path)


def _checkpoint(name: str, tmp_path) -> str:
    i = PRETRAINED.index(name)
    suffix = ".safetensors" if i % 2 == 0 else ".pt"
    path = tmp_path / f"{name}{suffix}"
    prefix = "module.visual." if name == "conch_v15" else "module."
    _save(_random_encoder(name).model.state_dict(), path, nest_prefix=prefix)
    return str(path)


@pytest.mark.parametrize("name", PRETRAINED)
def test_roundtrip_through_checkpoint(name, tmp_path):
    enc = _random_encoder(name)
    spec = enc.spec
    x = np.random.default_rng(1).integers(0, 256, (B, spec.patch_size, spec.patch_size, 3))
    x = x.astype(np.uint8)
    feats = enc.encode(x)
    assert feats.shape == (B, spec.dim) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])  # depends on the image

    loaded = create_patch_encoder(
        name, checkpoint=_checkpoint(name, tmp_path), depth=DEPTH, device="cpu", batch_size=1
    )
    assert not loaded.model.training
    again = loaded.encode(torch.from_numpy(x))  # torch input, two chunks of one
    np.testing.assert_allclose(again, feats, rtol=1e-5, atol=1e-5 * np.abs(feats).max())
    assert loaded.encode(x[:0]).shape == (0, spec.dim)


@pytest.mark.parametrize("name", PRETRAINED)
def test_other_patch_sizes_are_resized(name):
    enc = _random_encoder(name)
    s = enc.spec.input_size
    src = enc.spec.patch_size if enc.spec.patch_size != s else 2 * s
    x = _smooth_patches(B, src)
    interp = Image.BICUBIC if enc.transform.interpolation == "bicubic" else Image.BILINEAR
    ref = np.stack([np.asarray(Image.fromarray(p).resize((s, s), interp)) for p in x])

    a, b = enc.preprocess(x), enc.preprocess(ref)
    assert tuple(a.shape) == (B, 3, s, s) and tuple(b.shape) == (B, 3, s, s)
    diff = (a - b).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.05  # within ~2 grey levels of PIL
    mean = torch.tensor(enc.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.spec.std).view(1, 3, 1, 1)
    np.testing.assert_allclose(
        b, (torch.from_numpy(ref).permute(0, 3, 1, 2) / 255 - mean) / std, atol=1e-5
    )

    fa, fb = enc.encode(x), enc.encode(ref)
    between = np.linalg.norm(fa[0] - fa[1])
    assert np.linalg.norm(fa - fb, axis=1).max() < 0.1 * between


@pytest.mark.parametrize("name", PRETRAINED)
def test_checkpoint_required_and_path_checked(name, tmp_path):
    spec = get_patch_encoder_spec(name)
    with pytest.raises(CheckpointError) as err:
        create_patch_encoder(name, depth=DEPTH, device="cpu")
    msg = str(err.value)
    assert name in msg and all(f in msg for f in spec.checkpoint_files)
    assert spec.source in msg and "never downloads" in msg
    missing = tmp_path / "nowhere" / spec.checkpoint_files[0]
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_patch_encoder(name, checkpoint=missing, depth=DEPTH, device="cpu")
    with pytest.raises(ValueError, match="either"):
        create_patch_encoder(name, checkpoint=missing, random_weights=True, device="cpu")


@pytest.mark.parametrize("name", PRETRAINED)
def test_wrong_checkpoints_name_file_and_keys(name, tmp_path):
    state = _random_encoder(name).model.state_dict()
    keys = [k for k in state if not k.endswith("num_batches_tracked")]

    dropped = keys[-1]
    path = tmp_path / "dropped.safetensors"
    _save({k: v for k, v in state.items() if k != dropped}, path)
    with pytest.raises(CheckpointError) as err:
        create_patch_encoder(name, checkpoint=path, depth=DEPTH, device="cpu")
    assert str(path) in str(err.value) and dropped in str(err.value)

    reshaped = next(k for k in keys if k.endswith("weight") and state[k].ndim >= 2)
    path = tmp_path / "reshaped.pt"
    _save({**state, reshaped: state[reshaped][:-1]}, path)
    with pytest.raises(CheckpointError) as err:
        create_patch_encoder(name, checkpoint=path, depth=DEPTH, device="cpu")
    assert str(path) in str(err.value) and reshaped in str(err.value)

    other = PRETRAINED[(PRETRAINED.index(name) + 1) % len(PRETRAINED)]
    path = tmp_path / "other.safetensors"
    _save(_random_encoder(other).model.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not match") as err:
        create_patch_encoder(name, checkpoint=path, depth=DEPTH, device="cpu")
    assert str(path) in str(err.value)


def test_unreadable_checkpoints(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=str(bad)):
        create_patch_encoder("uni", checkpoint=bad, depth=DEPTH, device="cpu")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"")
    with pytest.raises(CheckpointError, match="unknown file type"):
        create_patch_encoder("uni", checkpoint=odd, depth=DEPTH, device="cpu")
    meta = tmp_path / "meta.pt"
    torch.save({"epoch": 1, "optimizer": {"lr": 0.1}}, meta)
    with pytest.raises(CheckpointError, match="no state dict"):
        create_patch_encoder("uni", checkpoint=meta, depth=DEPTH, device="cpu")


@pytest.mark.parametrize("name", ["uni", "conch_v15"])
def test_pos_embed_of_another_grid_is_resampled(name, tmp_path):
    from timm.layers import resample_abs_pos_embed

    enc = _random_encoder(name)
    state = dict(enc.model.state_dict())
    key = "trunk.pos_embed" if name == "conch_v15" else "pos_embed"
    state[key] = resample_abs_pos_embed(state[key], new_size=[16, 16], num_prefix_tokens=1)
    path = tmp_path / "grid16.safetensors"
    _save(state, path)
    loaded = create_patch_encoder(name, checkpoint=path, depth=DEPTH, device="cpu")
    assert loaded.model.state_dict()[key].shape == enc.model.state_dict()[key].shape
    x = _smooth_patches(B, loaded.spec.patch_size, seed=2)
    feats = loaded.encode(x)
    assert np.isfinite(feats).all()
    # Resampling 14x14 -> 16x16 -> 14x14 is close to the identity.
    np.testing.assert_allclose(feats, enc.encode(x), atol=0.05 * np.abs(feats).max())


def test_resnet50_trunc_loads_a_full_resnet50(tmp_path):
    import timm

    full = timm.create_model("resnet50", pretrained=False).eval()
    scramble_weights(full, seed=7)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in full.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = full.state_dict()
    assert any(k.startswith("layer4.") for k in state) and "fc.weight" in state
    # Old torchvision files (resnet50-19c8e357.pth) have no BatchNorm batch counters.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "model.safetensors"
    _save(state, path)

    enc = create_patch_encoder("resnet50-trunc", checkpoint=path, device="cpu")
    x = _smooth_patches(B, enc.spec.patch_size, seed=3)
    feats = enc.encode(x)
    assert feats.shape == (B, 1024)
    with torch.inference_mode():
        h = enc.preprocess(x)
        for part in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3"):
            h = getattr(full, part)(h)
    np.testing.assert_allclose(feats, h.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def test_bad_patch_input_is_refused():
    enc = _random_encoder(PRETRAINED[0])
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        enc.encode(np.zeros((1, 64, 64), np.uint8))
