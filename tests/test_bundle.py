"""Model bundle: save/load round trip, atomic writes, missing files, patch-encoder checks, feature
.h5 input, and the embed_* input forms."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from threads_search.models import bundle as bundle_mod
from threads_search.models.bundle import build_model, load_model, save_model
from threads_search.molecular import RnaNormalizer

D = 24
PATCH = {"name": "test-encoder", "dim": D, "patch_size": 512, "target_mpp": 0.5}
GENES_RNA = [f"G{i}" for i in range(30)]
GENES_DNA = ["TP53", "KRAS", "PIK3CA", "BRAF", "EGFR"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = pd.DataFrame(np.log1p(rng.gamma(2, 20, (50, 30))), columns=GENES_RNA)
    return build_model(
        PATCH,
        slide_encoder="threads",
        slide_config={"heads": 2, "head_dim": 16, "attn_dim": 8},
        normalizer=RnaNormalizer.fit(train, units="tpm"),
        rna_config={"hidden_dims": [32]},
        genes_dna=GENES_DNA,
        dna_config={"hidden_dims": [16]},
        training={"epochs": 3, "lr": 1e-4},
    ).eval()


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(57, D)).astype(np.float32)
    profile = {g: float(v) for g, v in zip(GENES_RNA, rng.gamma(2, 20, 30), strict=True)}
    return feats, profile, ["TP53", "BRAF"]


def _embeddings(m, inputs):
    feats, profile, muts = inputs
    return m.embed_slide(feats), m.embed_rna(profile), m.embed_dna(muts)


def test_round_trip_gives_identical_embeddings(model, inputs, tmp_path):
    out = save_model(model, tmp_path / "bundle")
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json",
        "model.safetensors",
        "genes_rna.txt",
        "genes_dna.txt",
        "rna_normalization.json",
    }
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["patch_encoder"] == PATCH and cfg["embedding_dim"] == 1024
    assert cfg["slide_encoder"]["name"] == "threads"
    assert cfg["slide_encoder"]["config"]["in_dim"] == D
    assert cfg["molecular_encoders"]["rna"]["units"] == "tpm"
    assert cfg["training"] == {"epochs": 3, "lr": 1e-4}
    assert cfg["versions"]["torch"] == torch.__version__
    assert (out / "genes_dna.txt").read_text().split() == GENES_DNA
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        prefixes = {k.split(".")[0] for k in f.keys()}  # noqa: SIM118
    assert prefixes == {"slide", "rna", "dna"}

    back = load_model(out)
    assert not back.training
    for a, b in zip(_embeddings(model, inputs), _embeddings(back, inputs), strict=True):
        assert a.dtype == np.float32 and a.shape == (1024,)
        np.testing.assert_array_equal(a, b)
        assert np.linalg.norm(a) == pytest.approx(1, abs=1e-5)


def test_embed_input_forms(model, inputs):
    feats, profile, muts = inputs
    emb, att = model.embed_slide(torch.from_numpy(feats), return_attention=True)
    assert att.shape == (2, 57) and np.allclose(att.sum(axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(model.embed_slide(feats, chunk_size=10), emb, atol=1e-6)
    series = pd.Series(profile, name="s1")
    np.testing.assert_array_equal(model.embed_rna(series), model.embed_rna(profile))
    frame = pd.DataFrame([profile, {g: v * 2 for g, v in profile.items()}])
    frame.insert(0, "sample_id", ["s1", "s2"])
    frame["age"] = [40, 50]  # clinical columns are not genes
    many = model.embed_rna(frame)
    assert many.shape == (2, 1024)
    np.testing.assert_allclose(many[0], model.embed_rna(profile), atol=1e-6)
    as_log = model.embed_rna({g: np.log1p(v) for g, v in profile.items()}, units="log")
    np.testing.assert_allclose(as_log, many[0], atol=1e-5)
    one = model.embed_dna(muts)
    np.testing.assert_array_equal(model.embed_dna({"TP53": 1, "BRAF": 1, "KRAS": 0}), one)
    maf = pd.DataFrame(
        {
            "Hugo_Symbol": ["TP53", "BRAF", "KRAS", "EGFR"],
            "Tumor_Sample_Barcode": ["a", "a", "a", "b"],
            "Variant_Classification": [
                "Missense_Mutation",
                "Nonsense_Mutation",
                "Silent",
                "Intron",
            ],
        }
    )
    from_maf = model.embed_dna(maf)
    assert from_maf.shape == (2, 1024)
    np.testing.assert_allclose(from_maf[0], one, atol=1e-6)
    np.testing.assert_allclose(from_maf[1], model.embed_dna([]), atol=1e-6)
    assert not np.allclose(from_maf[0], from_maf[1])


def test_embed_restores_train_mode(model, inputs):
    model.train()
    try:
        a = model.embed_slide(inputs[0])
        assert model.training
        np.testing.assert_array_equal(a, model.embed_slide(inputs[0]))  # dropout was off
    finally:
        model.eval()


def test_feature_dim_mismatch_names_both(model):
    with pytest.raises(ValueError, match=r"\(57, 16\).*'test-encoder' \(24-d\)"):
        model.embed_slide(np.zeros((57, 16), np.float32))


def _write_h5(path, feats, **attrs):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        coords = f.create_dataset("coords", data=np.arange(2 * len(feats)).reshape(-1, 2) * 512)
        coords.attrs.update({"patch_size": 512, "target_mpp": 0.5, **attrs})
    return path


def test_h5_input_and_patch_encoder_checks(model, inputs, tmp_path):
    feats = inputs[0]
    ref = model.embed_slide(feats)
    h5 = _write_h5(tmp_path / "a.h5", feats.astype(np.float16), patch_encoder="test-encoder")
    np.testing.assert_allclose(model.embed_slide(h5), model.embed_slide(feats.astype(np.float16)))
    np.testing.assert_allclose(model.embed_slide(str(h5)), ref, atol=2e-3)
    other = _write_h5(tmp_path / "b.h5", feats, encoder="resnet50")
    with pytest.raises(ValueError, match="'resnet50'.*expects patch encoder 'test-encoder'"):
        model.embed_slide(other)
    with pytest.warns(UserWarning, match="1 µm/px, the model expects 0.5 µm/px"):
        model.embed_slide(_write_h5(tmp_path / "mpp.h5", feats, target_mpp=1.0))
    fdir = tmp_path / "features_dir"
    h5c = _write_h5(fdir / "h5" / "c.h5", feats)
    np.testing.assert_array_equal(model.embed_slide(h5c), ref)  # no name recorded: accepted
    (fdir / "config.json").write_text(json.dumps({"patch_encoder": {"name": "uni_v2"}}))
    with pytest.raises(ValueError, match="'uni_v2'.*'test-encoder'"):
        model.embed_slide(h5c)


def test_failed_save_leaves_no_bundle_and_keeps_the_old_one(model, inputs, tmp_path):
    out = tmp_path / "bundle"
    save_model(model, out)
    before = _embeddings(load_model(out), inputs)
    model.training_params["bad"] = object()  # not JSON: fails after the weights are staged
    try:
        with pytest.raises(TypeError):
            save_model(model, out)
        with pytest.raises(TypeError):
            save_model(model, tmp_path / "fresh")
    finally:
        del model.training_params["bad"]
    assert not (tmp_path / "fresh" / "config.json").exists()
    assert [p.name for p in (tmp_path / "fresh").iterdir()] == []  # no temp files left
    assert not any(".tmp-" in p.name for p in out.iterdir())
    for a, b in zip(before, _embeddings(load_model(out), inputs), strict=True):
        np.testing.assert_array_equal(a, b)


def test_interrupted_commit_leaves_no_config(model, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    save_model(model, out)
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(dst) == "config.json":
            raise OSError("disk full (injected)")
        return real_replace(src, dst)

    monkeypatch.setattr(bundle_mod.os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        save_model(model, out)
    monkeypatch.undo()
    assert not (out / "config.json").exists()
    assert not any(".tmp-" in p.name for p in out.iterdir())
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_model(out)


def test_load_model_names_what_is_missing(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found: .*nowhere"):
        load_model(tmp_path / "nowhere")
    out = save_model(model, tmp_path / "bundle")
    (out / "model.safetensors").unlink()
    (out / "genes_dna.txt").unlink()
    with pytest.raises(FileNotFoundError, match="missing model.safetensors, genes_dna.txt"):
        load_model(out)


def test_slide_only_bundle(tmp_path):
    m = build_model(PATCH, slide_encoder="mean")
    back = load_model(save_model(m, tmp_path / "b"))
    assert back.rna is None and back.dna is None
    assert not (tmp_path / "b" / "genes_rna.txt").exists()
    with pytest.raises(ValueError, match="no RNA encoder"):
        back.embed_rna({"G1": 1.0})
    x = np.random.default_rng(0).normal(size=(9, D)).astype(np.float32)
    np.testing.assert_array_equal(back.embed_slide(x), m.embed_slide(x))
