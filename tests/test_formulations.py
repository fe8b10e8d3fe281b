"""Heads, targets, losses and decoding of every formulation; cross-checked against coral-pytorch."""

import numpy as np
import pytest
import torch
from coral_pytorch.dataset import corn_label_from_logits, levels_from_labelbatch, proba_to_label
from coral_pytorch.losses import coral_loss, corn_loss

from formulations import FORMULATIONS, create_formulation
from formulations.finetune import inverse_f1_task_weights, inverse_f1_weights
from formulations.mtl import combine
from formulations.regression import decode_scores, fit_cutpoints


@pytest.mark.parametrize("name", sorted(FORMULATIONS))
def test_each_formulation_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    f = create_formulation(name)
    x = torch.randn(16, 12)
    y = torch.tensor([0, 1, 2, 3] * 4)
    head = f.head(12)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = float(f.loss(head(x), y).detach())
    for _ in range(200):
        opt.zero_grad()
        loss = f.loss(head(x), y)
        loss.backward()
        opt.step()
    last = float(loss.detach())
    assert last <= first / 2, (name, first, last)
    assert (f.decode(head(x)).pred == y).float().mean() >= 0.75


def test_coral_matches_coral_pytorch():
    torch.manual_seed(1)
    f = create_formulation("coral")
    logits = torch.randn(64, 3)
    y = torch.randint(0, 4, (64,))
    ref = coral_loss(logits, levels_from_labelbatch(y, 4))
    assert torch.allclose(f.loss(logits, y), ref)
    dec = f.decode(logits)
    assert torch.equal(dec.pred, proba_to_label(torch.sigmoid(logits)))
    assert torch.equal(dec.pred, (torch.sigmoid(logits) > 0.5).sum(1))
    assert torch.allclose(dec.proba.sum(1), torch.ones(64))
    assert (dec.proba >= 0).all()
    cum = torch.sigmoid(logits)
    assert dec.counters["rank_inconsistent"] == int((cum[:, 1:] > cum[:, :-1]).any(1).sum())


def test_coral_probabilities_difference_the_cumulative_ones():
    f = create_formulation("coral")
    cum = torch.tensor([[0.9, 0.6, 0.2]])
    dec = f.decode(torch.logit(cum))
    assert torch.allclose(dec.proba, torch.tensor([[0.1, 0.3, 0.4, 0.2]]), atol=1e-6)


def test_corn_matches_coral_pytorch_and_weighting_reduces_to_it():
    torch.manual_seed(2)
    f = create_formulation("corn")
    logits = torch.randn(50, 3)
    y = torch.randint(0, 4, (50,))
    assert torch.allclose(f.loss(logits, y), corn_loss(logits, y, 4))
    assert torch.equal(f.decode(logits).pred, corn_label_from_logits(logits))
    weighted = f.loss(logits, y, {"mes": torch.tensor([1.0, 3.0, 1.0, 1.0])})
    assert not torch.allclose(weighted, corn_loss(logits, y, 4))


def test_regression_decoding_on_cut_points_and_far_outside():
    s = torch.tensor([-5.0, 0.4999, 0.5, 1.5, 2.4999, 2.5, 99.0])
    assert decode_scores(s, (0.5, 1.5, 2.5)).tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert decode_scores(s.numpy(), (0.5, 1.5, 2.5)).tolist() == [0, 0, 1, 2, 2, 3, 3]
    f = create_formulation("regression")
    dec = f.decode(s[:, None])
    assert dec.pred.tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert torch.equal(dec.score, s)
    assert dec.proba is None


def test_tuned_cut_points_improve_qwk_on_shifted_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    scores = y * 0.6 + 0.1 + rng.normal(0, 0.1, 300)  # compressed: fixed cut points misclassify
    from sklearn.metrics import cohen_kappa_score

    fixed = cohen_kappa_score(y, decode_scores(scores, (0.5, 1.5, 2.5)), weights="quadratic")
    cuts, value = fit_cutpoints(scores, y)
    assert value > fixed + 0.1
    assert value == pytest.approx(cohen_kappa_score(y, decode_scores(scores, cuts), weights="quadratic"))
    assert cuts == sorted(cuts)


def test_mtl_remission_only_batch_is_finite_and_leaves_active_head_untouched():
    torch.manual_seed(3)
    f = create_formulation("mtl")
    head = f.head(8)
    x = torch.randn(10, 8)
    y = torch.tensor([0, 1] * 5)
    loss = f.loss(head(x), y)
    assert torch.isfinite(loss)
    loss.backward()
    assert head.active.weight.grad is not None
    assert torch.count_nonzero(head.active.weight.grad) == 0
    assert torch.count_nonzero(head.remission.weight.grad) > 0


def test_mtl_weights_alpha_beta_gamma():
    torch.manual_seed(4)
    x = torch.randn(12, 8)
    y = torch.tensor([0, 1, 2, 3] * 3)
    only_primary = create_formulation("mtl", {"alpha": 1.0, "beta": 0.0, "gamma": 0.0})
    head = only_primary.head(8)
    out = head(x)
    expected = torch.nn.functional.cross_entropy(out["primary"], (y >= 2).long())
    assert torch.allclose(only_primary.loss(out, y), expected)


def test_mtl_hard_and_soft_decoding_disagree_where_they_should():
    # P(remission) = 0.55 split evenly between MES 0/1; P(active) = 0.45 almost all MES 2.
    out = {"primary": torch.log(torch.tensor([[0.55, 0.45]])),
           "remission": torch.log(torch.tensor([[0.5, 0.5]])),
           "active": torch.log(torch.tensor([[0.9, 0.1]]))}
    hard = create_formulation("mtl", {"decoding": "hard"}).decode(out)
    soft = create_formulation("mtl", {"decoding": "soft"}).decode(out)
    assert hard.pred.item() in (0, 1)
    assert soft.pred.item() == 2
    assert torch.allclose(soft.proba, combine(torch.tensor([[0.55, 0.45]]), torch.tensor([[0.5, 0.5]]),
                                              torch.tensor([[0.9, 0.1]])))


def test_inverse_f1_weights():
    w = inverse_f1_weights([0.9, 0.6, 0.3, 0.0], eps=0.01)
    raw = np.array([1 / 0.9, 1 / 0.6, 1 / 0.3, 1 / 0.01])
    assert np.allclose(w, raw / raw.mean())
    assert w.mean() == pytest.approx(1.0)
    assert np.all(np.diff(w) > 0)
    t = inverse_f1_task_weights([[0.9, 0.9], [0.5, 0.7], [0.2, 0.4]])
    assert t.sum() == pytest.approx(1.0) and t[2] > t[1] > t[0]


def test_bad_options_are_clear_errors():
    from benchmark.errors import BenchError

    with pytest.raises(BenchError, match="alpha"):
        create_formulation("mtl", {"alpha": -1})
    with pytest.raises(BenchError, match="all zero"):
        create_formulation("mtl", {"alpha": 0, "beta": 0, "gamma": 0})
    with pytest.raises(BenchError, match="tune_cutpoints"):
        create_formulation("regression", {"tune_cutpoint": True})
    with pytest.raises(BenchError, match="softmax"):
        create_formulation("sofmax")
