"""Slide-encoder contract, run for every registered encoder: shapes, attention, masking exactness,
determinism, chunked large-bag encoding, config round trip; plus the THREADS parameter budget."""

from __future__ import annotations

import functools
import json
import sys

import pytest
import torch

from threads_search.models.slide_encoders import create_slide_encoder, list_slide_encoders

D = 32
ENCODERS = list_slide_encoders()


@functools.cache
def _encoder(name: str):
    torch.manual_seed(0)
    return create_slide_encoder(name, D).eval()


def _padded_batch(lengths, seed=0):
    """Bags of the given lengths, padded with large garbage (not zeros) → features, mask, bags."""
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    feats = torch.randn(len(lengths), n, D, generator=g) * 50 + 7
    mask = torch.zeros(len(lengths), n, dtype=torch.bool)
    bags = []
    for i, k in enumerate(lengths):
        bag = torch.randn(k, D, generator=g)
        feats[i, :k] = bag
        mask[i, :k] = True
        bags.append(bag)
    return feats, mask, bags


def test_registry_lists_the_builtins():
    assert {"threads", "mean"} <= set(ENCODERS)
    with pytest.raises(KeyError, match="available: .*threads"):
        create_slide_encoder("no-such-encoder", D)


@pytest.mark.parametrize("name", ENCODERS)
def test_shapes_and_dtypes(name):
    enc = _encoder(name)
    feats, mask, _ = _padded_batch([5, 9, 3])
    with torch.no_grad():
        out = enc(feats, mask)
    assert out.embedding.shape == (3, 1024) == (3, enc.out_dim)
    assert out.embedding.dtype == torch.float32
    assert torch.isfinite(out.embedding).all()
    if out.attention is not None:
        assert out.attention.ndim == 3 and out.attention.shape[0] == 3
        assert out.attention.shape[2] == 9 and out.attention.dtype == torch.float32


@pytest.mark.parametrize("name", ENCODERS)
def test_attention_sums_to_one_over_real_patches_and_zero_on_padding(name):
    enc = _encoder(name)
    feats, mask, _ = _padded_batch([4, 12, 1, 7], seed=1)
    with torch.no_grad():
        att = enc(feats, mask).attention
    if att is None:
        pytest.skip(f"{name} reports no attention")
    sums = att.sum(dim=2)
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    pad = ~mask[:, None, :].expand_as(att)
    assert (att[pad] == 0).all()
    assert (att >= 0).all()


@pytest.mark.parametrize("name", ENCODERS)
def test_bag_padded_in_a_batch_equals_the_bag_alone(name):
    enc = _encoder(name)
    lengths = [5, 11, 17, 2]
    feats, mask, bags = _padded_batch(lengths, seed=2)
    with torch.no_grad():
        batched = enc(feats, mask)
        for i, bag in enumerate(bags):
            alone = enc(bag[None], None)
            torch.testing.assert_close(batched.embedding[i], alone.embedding[0], atol=1e-5, rtol=0)
            if alone.attention is not None:
                k = lengths[i]
                torch.testing.assert_close(
                    batched.attention[i, :, :k], alone.attention[0], atol=1e-5, rtol=0
                )


@pytest.mark.parametrize("name", ENCODERS)
def test_deterministic_in_eval_mode(name):
    enc = _encoder(name)
    feats, mask, _ = _padded_batch([6, 8], seed=3)
    with torch.no_grad():
        a, b = enc(feats, mask), enc(feats, mask)
    assert torch.equal(a.embedding, b.embedding)
    # different bags give different embeddings (the encoder is not constant)
    assert not torch.allclose(a.embedding[0], a.embedding[1])


@pytest.mark.parametrize("name", ENCODERS)
def test_chunked_embed_bag_matches_forward(name):
    enc = _encoder(name)
    bag = torch.randn(301, D, generator=torch.Generator().manual_seed(4)) * 3
    with torch.no_grad():
        full = enc(bag[None], None)
        chunked = enc.embed_bag(bag.half().float(), chunk_size=37)
        ref = enc(bag.half().float()[None], None)
    assert chunked.embedding.shape == (enc.out_dim,)
    torch.testing.assert_close(chunked.embedding, ref.embedding[0], atol=1e-5, rtol=1e-5)
    if full.attention is not None:
        assert chunked.attention.shape == full.attention.shape[1:]
        torch.testing.assert_close(chunked.attention, ref.attention[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
def test_config_round_trip_rebuilds_the_same_network(name):
    enc = _encoder(name)
    data = json.loads(json.dumps(enc.config.to_dict()))
    assert type(enc.config).from_dict(data) == enc.config
    again = create_slide_encoder(name, data.pop("in_dim"), **data).eval()
    again.load_state_dict(enc.state_dict())
    bag = torch.randn(1, 10, D)
    with torch.no_grad():
        assert torch.equal(again(bag).embedding, enc(bag).embedding)
    with pytest.raises(ValueError, match="unknown setting"):
        type(enc.config).from_dict({**enc.config.to_dict(), "bogus": 1})


@pytest.mark.parametrize("name", ENCODERS)
def test_rejects_bad_inputs(name):
    enc = _encoder(name)
    with pytest.raises(ValueError, match="dim 16"):
        enc(torch.randn(1, 4, 16))
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"bags \[1\]"):
        enc(torch.randn(2, 2, D), mask)


def test_threads_parameter_count_near_the_paper():
    enc = create_slide_encoder("threads", 768)
    n = sum(p.numel() for p in enc.parameters())
    assert abs(n - 11.3e6) / 11.3e6 < 0.25, n
    # the count stated in the module docstring is the real one
    assert f"{n:,}" in sys.modules[type(enc).__module__].__doc__


def test_threads_heads_are_configurable():
    enc = create_slide_encoder("threads", D, heads=3, head_dim=8, attn_dim=4, out_dim=64).eval()
    with torch.no_grad():
        out = enc(torch.randn(2, 5, D))
    assert out.embedding.shape == (2, 64)
    assert out.attention.shape == (2, 3, 5)
