"""Evaluation metrics: hand-computed cases on small 2-D embeddings, cross-checks against naive
reference loops, and behaviour on synthetic clustered / shuffled data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from threads_search.eval import (
    build_prototypes,
    cross_modal_recall,
    few_shot_curve,
    linear_probe,
    prototype_zero_shot,
    rankme,
    retrieval_metrics,
)
from threads_search.eval.embedding import class_order


def angles(*deg: float, scale=None) -> np.ndarray:
    """Unit 2-D vectors at the given angles (degrees): cosine similarity = cos(Δangle)."""
    rad = np.deg2rad(np.asarray(deg, float))
    v = np.stack([np.cos(rad), np.sin(rad)], axis=1)
    return v if scale is None else v * np.asarray(scale, float)[:, None]


# ---------------------------------------------------------------- cross-modal recall


def test_cross_modal_recall_hand_case():
    gallery = angles(0, 30, 60, 90, scale=[1, 3, 0.5, 2])  # norms must not matter
    queries = angles(0, 40, 80)
    # q0 → g0 is 1st; q1 (40°) → g3 (90°) is 4th; q2 (80°) → g1 (30°) is 3rd
    r = cross_modal_recall(queries, gallery, np.array([0, 3, 1]), ks=(1, 2, 3, 4, 10))
    assert r == pytest.approx({"R@1": 1 / 3, "R@2": 1 / 3, "R@3": 2 / 3, "R@4": 1.0, "R@10": 1.0})


def test_cross_modal_recall_relevance_matrix():
    gallery = angles(0, 30, 60, 90)
    queries = angles(0, 40, 80)
    rel = np.zeros((3, 4), bool)
    rel[0, 0] = True
    rel[1, [0, 3]] = True  # g0 is 3rd for q1 (40° away), g3 4th → best rank 3
    # q2 has no relevant item: always a miss
    r = cross_modal_recall(queries, gallery, rel, ks=(1, 3, 4))
    assert r == pytest.approx({"R@1": 1 / 3, "R@3": 2 / 3, "R@4": 2 / 3})
    as_index = cross_modal_recall(queries, gallery, np.array([0, 3, 1]), ks=(1, 3))
    rel_index = np.zeros((3, 4), bool)
    rel_index[[0, 1, 2], [0, 3, 1]] = True
    assert cross_modal_recall(queries, gallery, rel_index, ks=(1, 3)) == as_index


def test_cross_modal_recall_ties_go_to_lower_row():
    gallery = np.ones((5, 3))
    r = cross_modal_recall(np.ones((1, 3)), gallery, np.array([2]), ks=(1, 2, 3))
    assert r == {"R@1": 0.0, "R@2": 0.0, "R@3": 1.0}
    gallery = angles(50, 10, 10, 0, 10)  # q at 0°: g3 first, then g1 g2 g4 tied, then g0
    r = cross_modal_recall(angles(0, 0), gallery, np.array([4, 0]), ks=(1, 3, 4, 5))
    assert r == {"R@1": 0.0, "R@3": 0.0, "R@4": 0.5, "R@5": 1.0}


def test_cross_modal_recall_errors():
    q, g = angles(0, 10), angles(0, 10, 20)
    with pytest.raises(ValueError, match="match"):
        cross_modal_recall(q, g, np.array([0]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cross_modal_recall(q, g, np.array([0, 3]))
    with pytest.raises(ValueError, match="D="):
        cross_modal_recall(q, np.ones((3, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        cross_modal_recall(np.zeros((0, 2)), g, np.array([], int))
    with pytest.raises(ValueError, match="k must be >= 1"):
        cross_modal_recall(q, g, np.array([0, 1]), ks=(0,))


# ---------------------------------------------------------------- slide→slide retrieval

# 5 items at 0°, 10°, 25°, 45°, 70°; labels a a b a b. Rankings (nearest first, self excluded):
#   q0: 1a 2b 3a 4b   q1: 0a 2b 3a 4b   q2(b): 1a 3a 0a 4b   q3: 2b 4b 1a 0a   q4(b): 3a 2b 1a 0a
EMB = angles(0, 10, 25, 45, 70)
LAB = np.array(["a", "a", "b", "a", "b"])


def test_retrieval_hand_case():
    r = retrieval_metrics(EMB, LAB, ks=(1, 2, 3))
    assert r["acc@1"] == pytest.approx(2 / 5)
    assert r["acc@2"] == pytest.approx(3 / 5)
    assert r["acc@3"] == pytest.approx(4 / 5)
    assert r["mMV@3"] == pytest.approx(2 / 5)
    assert r["mAP@1"] == pytest.approx(2 / 5)
    # AP@3 = Σ P@i·rel_i / min(3, R): q0 = q1 = (1 + 2/3)/2, q2 = 0, q3 = (1/3)/2, q4 = (1/2)/1
    assert r["mAP@3"] == pytest.approx((5 / 6 + 5 / 6 + 0 + 1 / 6 + 1 / 2) / 5)


def test_retrieval_ap_denominator_k():
    r = retrieval_metrics(EMB, LAB, ks=(3,), ap_denominator="k")
    assert r["mAP@3"] == pytest.approx((5 / 9 + 5 / 9 + 0 + 1 / 9 + 1 / 6) / 5)


def test_majority_vote_tie_break():
    # top-2 label pairs: q0 (a,b) q1 (a,b) q2 (a,a) q3 (b,b) q4 (a,b). Ties go to the label
    # ranked first (a): right for q0, q1 (label a), wrong for q4 (label b).
    assert retrieval_metrics(EMB, LAB, ks=(2,))["mMV@2"] == pytest.approx(2 / 5)
    # counting a tie as correct when the query's label is among the tied ones: q4 is right too
    assert retrieval_metrics(EMB, LAB, ks=(2,), mv_ties="any")["mMV@2"] == pytest.approx(3 / 5)


def test_patient_level_exclusion_changes_result():
    groups = ["p0", "p0", "p1", "p2", "p3"]  # items 0 and 1 are the same patient
    plain = retrieval_metrics(EMB, LAB, ks=(1, 3))
    excl = retrieval_metrics(EMB, LAB, ks=(1, 3), groups=groups)
    assert plain["acc@1"] == pytest.approx(2 / 5)
    assert excl["acc@1"] == 0.0  # q0 and q1 may no longer retrieve each other
    # q0 = q1: candidates 2b 3a 4b, R = 1, hit at rank 2 → 1/2; q3 = 1/6; q4 = 1/2
    assert excl["mAP@3"] == pytest.approx((1 / 2 + 1 / 2 + 0 + 1 / 6 + 1 / 2) / 5)
    # unique groups behave like no groups
    assert retrieval_metrics(EMB, LAB, ks=(1, 3), groups=list("vwxyz")) == plain


def test_retrieval_k_beyond_candidates():
    r = retrieval_metrics(EMB, LAB, ks=(10,), groups=["p0", "p0", "p1", "p2", "p3"])
    assert r["acc@10"] == 1.0  # every query's label occurs among its (3 or 4) candidates
    # q0, q1: hit at rank 2 of 3, R = 1 → 1/2; q2(b): 1a 3a 0a 4b → (1/4)/1;
    # q3(a): 2b 4b 1a 0a → (1/3 + 2/4)/2; q4(b): 3a 2b 1a 0a → (1/2)/1
    assert r["mAP@10"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 4 + 5 / 12 + 1 / 2) / 5)


def naive_retrieval(emb, labels, ks, groups, ap_denominator, mv_ties):
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    out = {f"{m}@{k}": [] for k in ks for m in ("acc", "mMV", "mAP")}
    for q in range(len(x)):
        cand = [j for j in range(len(x)) if j != q and (groups is None or groups[j] != groups[q])]
        cand.sort(key=lambda j: (-float(x[q] @ x[j]), j))
        n_rel = sum(labels[j] == labels[q] for j in cand)
        for k in ks:
            top = [labels[j] for j in cand[:k]]
            out[f"acc@{k}"].append(labels[q] in top)
            counts = {lab: top.count(lab) for lab in top}
            best = max(counts.values())
            tied = [lab for lab in top if counts[lab] == best]  # rank order
            out[f"mMV@{k}"].append(labels[q] in tied if mv_ties == "any" else tied[0] == labels[q])
            hits, s = 0, 0.0
            for i, lab in enumerate(top, start=1):
                if lab == labels[q]:
                    hits += 1
                    s += hits / i
            d = min(k, n_rel) if ap_denominator == "min" else k
            out[f"mAP@{k}"].append(s / d if n_rel else 0.0)
    return {key: float(np.mean(v)) for key, v in out.items()}


@pytest.mark.parametrize("ap_denominator", ["min", "k"])
@pytest.mark.parametrize("mv_ties", ["rank", "any"])
@pytest.mark.parametrize("use_groups", [False, True])
@pytest.mark.parametrize("ties", [False, True])
def test_retrieval_matches_naive_reference(ap_denominator, mv_ties, use_groups, ties):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(60, 4)) + np.repeat(rng.normal(size=(3, 4)), 20, axis=0)
    if ties:  # only 9 distinct rows: exact similarity ties everywhere
        emb = emb[rng.integers(0, 9, 60)]
    labels = rng.integers(0, 3, 60)
    groups = rng.integers(0, 25, 60) if use_groups else None
    ks = (1, 2, 5, 10, 100)
    got = retrieval_metrics(emb, labels, ks, groups, ap_denominator=ap_denominator, mv_ties=mv_ties)
    want = naive_retrieval(emb, labels, ks, groups, ap_denominator, mv_ties)
    assert got == pytest.approx(want)


def test_retrieval_errors():
    with pytest.raises(ValueError, match="no candidate"):
        retrieval_metrics(EMB, LAB, groups=["p"] * 5)
    with pytest.raises(ValueError, match="labels has 4 entries"):
        retrieval_metrics(EMB, LAB[:4])
    with pytest.raises(ValueError, match="groups has 3 entries"):
        retrieval_metrics(EMB, LAB, groups=["p", "q", "r"])
    with pytest.raises(ValueError, match="empty"):
        retrieval_metrics(np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="non-finite"):
        retrieval_metrics(np.array([[1.0, np.nan], [0.0, 1.0]]), [0, 1])
    with pytest.raises(ValueError, match="ap_denominator"):
        retrieval_metrics(EMB, LAB, ap_denominator="max")


# ---------------------------------------------------------------- linear probe / few-shot


def blobs(n_per_class, n_classes, dim, sep, seed, noise_seed=0):
    """Gaussian clusters around centres drawn from ``seed``; unit noise drawn from ``noise_seed``
    (same ``seed``, other ``noise_seed``: a fresh sample of the same classes)."""
    centres = np.random.default_rng(seed).normal(size=(n_classes, dim)) * sep
    y = np.repeat(np.arange(n_classes), n_per_class)
    noise = np.random.default_rng([seed, noise_seed]).normal(size=(len(y), dim))
    return centres[y] + noise, y


def test_linear_probe_separable():
    x, y = blobs(30, 3, 8, sep=10.0, seed=0)
    xt, yt = blobs(20, 3, 8, sep=10.0, seed=0, noise_seed=1)
    labels = np.array(["lusc", "luad", "meso"])
    res = linear_probe(x, labels[y], xt, labels[yt], return_predictions=True)
    assert res["balanced_accuracy"] == pytest.approx(1.0)
    assert res["auc"] == pytest.approx(1.0)
    assert res["weighted_f1"] == pytest.approx(1.0)
    assert res["probabilities"].shape == (60, 3)
    want = roc_auc_score(labels[yt], res["probabilities"], multi_class="ovr", labels=res["classes"])
    assert res["auc"] == pytest.approx(want)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_linear_probe_shuffled_labels_is_chance(n_classes):
    rng = np.random.default_rng(1)
    x, xt = rng.normal(size=(400, 10)), rng.normal(size=(400, 10))
    y, yt = rng.integers(0, n_classes, 400), rng.integers(0, n_classes, 400)
    res = linear_probe(x, y, xt, yt, standardize=True)
    assert abs(res["balanced_accuracy"] - 1 / n_classes) < 0.08
    assert abs(res["auc"] - 0.5) < 0.08


def test_linear_probe_errors():
    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(ValueError, match=">= 2 classes"):
        linear_probe(x, np.zeros(6), x, np.zeros(6))
    with pytest.raises(ValueError, match="absent from train_y"):
        linear_probe(x, [0, 1] * 3, x, [0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="train_y has 5 entries"):
        linear_probe(x, [0, 1] * 2 + [0], x, [0, 1] * 3)
    with pytest.raises(ValueError, match="D="):
        linear_probe(x, [0, 1] * 3, x[:, :2], [0, 1] * 3)
    with pytest.raises(ValueError, match="empty"):
        linear_probe(x, [0, 1] * 3, np.zeros((0, 3)), [])


def test_few_shot_curve_increases_with_shots():
    x, y = blobs(40, 4, 32, sep=0.5, seed=2)
    xt, yt = blobs(40, 4, 32, sep=0.5, seed=2, noise_seed=1)
    curve = few_shot_curve(x, y, xt, yt, shots=(1, 4, 16), n_draws=4, seed=0)
    assert list(curve["shots"]) == [1, 4, 16]
    ba = curve["balanced_accuracy_mean"].to_numpy()
    assert ba[0] < ba[1] < ba[2]
    assert ba[2] - ba[0] > 0.15
    assert (curve["balanced_accuracy_std"] >= 0).all()
    again = few_shot_curve(x, y, xt, yt, shots=(4,), n_draws=4, seed=0)
    assert again["balanced_accuracy_mean"].iloc[0] == pytest.approx(ba[1])


def test_few_shot_small_classes_use_all_samples():
    x, y = blobs(5, 2, 4, sep=3.0, seed=0)
    keep = np.r_[0:5, 5:7]  # class 0 has 5 samples, class 1 only 2
    curve = few_shot_curve(x[keep], y[keep], x, y, shots=(1, 3, 8), n_draws=4).set_index("shots")
    assert curve.loc[1, "n_train"] == 2 and curve.loc[1, "n_draws"] == 4
    assert curve.loc[3, "n_train"] == 3 + 2
    assert curve.loc[8, "n_train"] == 5 + 2
    assert curve.loc[8, "n_draws"] == 1 and curve.loc[8, "balanced_accuracy_std"] == 0.0
    with pytest.raises(ValueError, match="shots"):
        few_shot_curve(x, y, x, y, shots=(0,))


# ---------------------------------------------------------------- prototypes / zero-shot


def test_build_prototypes_normalises_before_averaging():
    emb = np.array([[10.0, 0.0], [0.0, 1.0], [-3.0, 0.0]])
    classes, proto, counts = build_prototypes(emb, ["A", "A", "B"])
    assert list(classes) == ["A", "B"]
    assert list(counts) == [2, 1]
    np.testing.assert_allclose(proto, angles(45, 180), atol=1e-12)  # not pulled toward [10, 0]


def test_prototype_zero_shot_hand_case():
    protos = angles(0, 90, 180)  # A = mean of 0° and 90° → 45°; B at 180°
    slides = angles(100, 170, 10, scale=[5, 1, 2])
    res = prototype_zero_shot(slides, ["A", "B", "B"], protos, ["A", "A", "B"])
    assert list(res["predictions"]) == ["A", "B", "A"]
    want = np.cos(np.deg2rad([[55, 80], [125, 10], [35, 170]]))
    np.testing.assert_allclose(res["scores"], want, atol=1e-12)
    assert res["accuracy"] == pytest.approx(2 / 3)
    assert res["balanced_accuracy"] == pytest.approx((1.0 + 0.5) / 2)


def test_prototype_zero_shot_clustered():
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(3, 16)) * 3
    py, sy = np.repeat(np.arange(3), 15), np.repeat(np.arange(3), 25)
    mol = centres[py] + rng.normal(size=(len(py), 16))
    slides = 2.0 * (centres[sy] + rng.normal(size=(len(sy), 16)))
    res = prototype_zero_shot(slides, sy, mol, py)
    assert res["accuracy"] == pytest.approx(1.0)
    assert res["balanced_accuracy"] == pytest.approx(1.0)
    assert res["auc"] == pytest.approx(1.0)
    # nearest prototype by L2 on normalised embeddings, computed directly
    _, proto, _ = build_prototypes(mol, py)
    unit = slides / np.linalg.norm(slides, axis=1, keepdims=True)
    dist = np.linalg.norm(unit[:, None, :] - proto[None], axis=2)
    np.testing.assert_array_equal(res["predictions"], dist.argmin(axis=1))
    unlabelled = prototype_zero_shot(slides, None, mol, py)
    assert "accuracy" not in unlabelled
    np.testing.assert_array_equal(unlabelled["predictions"], res["predictions"])
    with pytest.raises(ValueError, match="D="):
        prototype_zero_shot(slides[:, :8], sy, mol, py)


def test_class_order_by_value_numbers_numerically():
    """The one class order (shared with ``Index.classify``): by value, numbers numerically;
    labels that cannot be compared (text mixed with numbers) by their text. Before, mixed
    labels in an object array made ``prototype_zero_shot`` fail (``np.unique``)."""
    assert class_order([10, 2, 9, 2]) == [2, 9, 10]
    assert class_order(np.array(["b", "a", "b"])) == ["a", "b"]
    assert class_order(np.array(["x", 1, 10, 2], dtype=object)) == [1, 10, 2, "x"]
    labels = np.array(["x", 1, 1], dtype=object)
    res = prototype_zero_shot(angles(10, 170), None, angles(180, 0, 90), labels)
    assert list(res["classes"]) == [1, "x"] and list(res["predictions"]) == [1, "x"]
    classes, _, counts = build_prototypes(angles(0, 90, 180), [10, 2, 10])
    assert list(classes) == [2, 10] and list(counts) == [1, 2]


# ---------------------------------------------------------------- RankMe


def test_rankme():
    assert rankme(np.eye(6)) == pytest.approx(6.0, rel=1e-4)
    assert rankme(5.0 * np.eye(10, 8)[:, :3] @ np.eye(3, 8)) == pytest.approx(3.0, rel=1e-4)
    rng = np.random.default_rng(0)
    rank1 = np.outer(rng.normal(size=50), rng.normal(size=32))
    assert rankme(rank1) == pytest.approx(1.0, abs=1e-3)
    full = rng.normal(size=(200, 16))
    assert 12.0 < rankme(full) <= 16.0 + 1e-3
    assert rankme(full * 7.0) == pytest.approx(rankme(full))
    assert rankme(np.zeros((4, 3))) == 0.0
    with pytest.raises(ValueError, match="2-D"):
        rankme(np.ones(5))
