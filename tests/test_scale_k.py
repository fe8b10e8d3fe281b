"""Every formulation on a scale other than MES's four grades (K = 5, as retinopathy or KL grades): head, loss and
decoding sized by K, each loss equal to the package's own (or the formula) called at K = 5. The hierarchical MTL
takes its hierarchy as `groups:` and refuses a scale other than MES's without one."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmark.errors import BenchError
from formulations import FORMULATIONS, create_formulation
from formulations.finetune import task_counts

K = 5
SCALE_FREE = sorted(FORMULATIONS)
GROUPS = [[0, 1], [2, 3, 4]]  # the MTL's hierarchy on five grades


def on_five(name, y=None, **options):
    if name == "mtl":
        options = {"groups": GROUPS, **options}
    f = create_formulation(name, options, num_classes=K)
    if y is not None:  # what the harness sets from a fold's training labels (e.g. class priors)
        f = create_formulation(name, {**options, **f.training_overrides(task_counts(f, y.numpy()))}, num_classes=K)
    return f


@pytest.mark.parametrize("name", SCALE_FREE)
def test_each_formulation_trains_and_decodes_five_grades(name):
    torch.manual_seed(0)
    x = torch.randn(20, 24)  # more dimensions than points: a linear head can fit every grade
    y = torch.arange(20) % K
    f = on_five(name, y)
    assert f.num_classes == K and f.class_names == tuple(f"grade {g}" for g in range(K))
    assert "mes" not in f.tasks or f.tasks["mes"].classes == f.class_names
    head = f.head(24)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = float(f.loss(head(x), y).detach())
    for _ in range(400):
        opt.zero_grad()
        loss = f.loss(head(x), y)
        loss.backward()
        opt.step()
    assert float(loss.detach()) <= 0.8 * first, name
    dec = f.decode(head(x))
    assert (dec.pred == y.numpy()).mean() >= 0.7 and dec.pred.max() <= K - 1
    if dec.proba is not None:
        assert dec.proba.shape == (20, K) and np.allclose(dec.proba.sum(1), 1, atol=1e-5)
    grades = np.arange(50) % K
    assert np.array_equal(f.predict(f.example_outputs(grades), f.initial_state()), grades)
    assert len(f.output_names) == dec.outputs.shape[1]


def _package_loss(name, out, y):
    """Each loss as its package (or its formula) computes it on five grades, written independently of the
    formulation modules."""
    from coral_pytorch.dataset import levels_from_labelbatch
    from coral_pytorch.losses import coral_loss, corn_loss
    from dlordinal import losses as dl
    from dlordinal.soft_labelling import get_beta_soft_labels

    beta_rows = torch.as_tensor(np.asarray(get_beta_soft_labels(K), float), dtype=torch.float32)
    return {
        "softmax": lambda: F.cross_entropy(out, y),
        "coral": lambda: coral_loss(out, levels_from_labelbatch(y, K)),
        "corn": lambda: corn_loss(out, y, K),
        "cdw_ce": lambda: dl.CDWCELoss(K, alpha=5.0, margin=0.0)(out, y),
        "emd": lambda: dl.EMDLoss(K)(out, y),
        "wk": lambda: dl.WKLoss(K, penalization_type="quadratic", use_logits=True)(out, y),
        "ecoc": lambda: dl.OrdinalECOCDistanceLoss(K)(torch.sigmoid(out), y) / len(y),
        "soft_labels": lambda: -(beta_rows[y] * F.log_softmax(out, 1)).sum(1).mean(),
        "regression": lambda: F.mse_loss(out.squeeze(1), y.float()),
    }[name]()


@pytest.mark.parametrize(
    "name", ["softmax", "coral", "corn", "cdw_ce", "emd", "wk", "ecoc", "soft_labels", "regression"]
)
def test_each_loss_is_the_packages_own_at_five_grades(name):
    torch.manual_seed(1)
    f = on_five(name)
    out = f.head(7)(torch.randn(30, 7))
    y = torch.arange(30) % K
    if name == "cdw_ce":
        f = on_five(name, alpha=5.0)
    assert torch.allclose(f.loss(out, y), _package_loss(name, out, y), atol=1e-6), name


def test_focal_and_logit_adjusted_follow_their_formulas_at_five_grades():
    torch.manual_seed(2)
    z = torch.randn(25, K)
    y = torch.arange(25) % K
    gamma = 2.0
    logp = F.log_softmax(z, 1)[torch.arange(25), y]
    focal = -(((1 - logp.exp()) ** gamma) * logp).mean()
    assert torch.allclose(on_five("focal", gamma=gamma).loss(z, y), focal, atol=1e-6)
    priors = [0.4, 0.3, 0.15, 0.1, 0.05]
    shifted = F.cross_entropy(z + 1.0 * torch.log(torch.tensor(priors)), y)
    assert torch.allclose(on_five("logit_adjusted", priors=priors, tau=1.0).loss(z, y), shifted, atol=1e-6)


def test_options_that_do_not_fit_the_scale_are_refused_naming_it():
    with pytest.raises(BenchError, match="needs 4"):
        on_five("regression", cutpoints=[0.5, 1.5, 2.5])
    assert on_five("regression").options["cutpoints"] == [0.5, 1.5, 2.5, 3.5]
    with pytest.raises(BenchError, match="one per grade"):
        on_five("logit_adjusted", priors=[0.25, 0.25, 0.25, 0.25])
    with pytest.raises(BenchError, match="groups"):
        create_formulation("mtl", {}, num_classes=K)
    with pytest.raises(BenchError, match="cover 4 grades"):
        on_five("mtl", groups=[[0, 1], [2, 3]])
    with pytest.raises(BenchError, match="gamma"):  # one sub-head: gamma would weigh nothing
        create_formulation("mtl", {"groups": [[0], [1, 2]], "gamma": 0.5}, num_classes=3)
    # MES's own scale is the default: the same names and sizes as always
    f = create_formulation("coral")
    assert f.num_classes == 4 and f.output_names == ("P(MES > 0)", "P(MES > 1)", "P(MES > 2)")
    assert create_formulation("softmax").tasks["mes"].classes == ("MES 0", "MES 1", "MES 2", "MES 3")


def test_metrics_at_five_grades_are_scikit_learns_and_the_binary_split_follows_the_scale():
    from sklearn.metrics import cohen_kappa_score, f1_score, recall_score, roc_auc_score

    from benchmark.labels import Scale
    from benchmark.metrics import all_rows, known_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, K, 300)
    pred = np.clip(y + rng.integers(-1, 2, 300), 0, K - 1)
    proba = rng.dirichlet(np.ones(K), 300)
    names = tuple(f"KL {g}" for g in range(K))
    scale = Scale("KL", names, binary_cut=2, binary_names=("no OA", "OA"))
    rows = {(t, m, c): v for t, m, c, v in all_rows(y, pred, {}, {}, proba, scale)[0]}
    labels = list(range(K))
    assert rows[("mes", "f1", "macro")] == pytest.approx(f1_score(y, pred, average="macro", labels=labels))
    assert rows[("mes", "recall", "4")] == pytest.approx(recall_score(y, pred, labels=[4], average=None)[0])
    assert rows[("mes", "qwk", "")] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic", labels=labels))
    assert rows[("ra", "recall", "")] == pytest.approx(recall_score(y >= 2, pred >= 2))
    assert rows[("ra", "auc", "")] == pytest.approx(roc_auc_score(y >= 2, proba[:, 2:].sum(1)))
    assert rows[("mes", "auc", "4")] == pytest.approx(roc_auc_score(y == 4, proba[:, 4]))
    # a scale without a binary split has no binary rows at all (absent, never 0)
    plain = Scale("grade", names, binary_cut=None)
    keys = known_metrics({}, plain)
    assert not any(t == "ra" for t, _, _ in keys) and ("mes", "f1", "4") in keys
    with pytest.raises(ValueError, match="binary_cut"):
        Scale("bad", names, binary_cut=5)


def test_tuned_cut_points_at_five_grades_score_all_five():
    """The cut-point search scores macro-F1 over all K grades, not MES's four."""
    from formulations.regression import fit_cutpoints

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(K), 40)
    scores = y + rng.normal(0, 0.3, len(y)) + 0.4  # shifted: the default cut points are off by 0.4
    cuts, best = fit_cutpoints(scores, y, "macro_f1", num_classes=K)
    assert len(cuts) == K - 1 and best > 0.8


def test_mtl_on_five_grades_is_the_masked_joint_loss_and_the_product_rule():
    """L = α·CE(primary over the groups) + β·CE(first sub-head on its grades) + γ·CE(the next), each sub-head's CE
    on its own images only; soft decoding P(k) = P(group) · P(k | group); hard routes by the primary head."""
    torch.manual_seed(0)
    f = on_five("mtl", alpha=0.5, beta=0.3, gamma=0.2)
    assert list(f.tasks) == ["primary", "g0-1", "g2-4"]
    head = f.head(8)
    x, y = torch.randn(30, 8), torch.arange(30) % K
    out = head(x)
    group = (y >= 2).long()
    low, high = y < 2, y >= 2
    expected = (
        0.5 * F.cross_entropy(out["primary"], group)
        + 0.3 * F.cross_entropy(out["g0-1"][low], y[low])
        + 0.2 * F.cross_entropy(out["g2-4"][high], y[high] - 2)
    )
    assert torch.allclose(f.loss(out, y), expected, atol=1e-6)
    o = f.outputs(out).detach().numpy().astype(np.float64)
    p1, p_low, p_high = o[:, :2], o[:, 2:4], o[:, 4:7]
    product = np.concatenate([p1[:, :1] * p_low, p1[:, 1:] * p_high], axis=1)
    assert np.allclose(f.proba(o, None), product)
    soft = create_formulation("mtl", {"groups": GROUPS, "decoding": "soft"}, num_classes=K)
    assert np.array_equal(soft.predict(o, None), product.argmax(1))
    hard = np.where(p1.argmax(1) == 1, 2 + p_high.argmax(1), p_low.argmax(1))
    assert np.array_equal(f.predict(o, None), hard)


def test_two_grades_train_where_it_makes_sense_and_are_refused_where_not():
    """K = 2: every formulation with a loss defined on two grades builds and decodes; dlordinal's beta soft labels
    (tabulated from K = 3) and a hierarchy (which needs a group of two grades and another group) are refused."""
    y = torch.tensor([0, 1, 0, 1])
    for name in sorted(FORMULATIONS):
        if name in ("mtl", "soft_labels", "logit_adjusted"):
            continue
        f = create_formulation(name, {}, num_classes=2)
        out = f.head(8)(torch.randn(4, 8))
        assert torch.isfinite(f.loss(out, y)) and set(f.decode(out).pred) <= {0, 1}, name
    assert create_formulation("soft_labels", {"distribution": "triangular"}, num_classes=2).num_classes == 2
    with pytest.raises(BenchError, match="not defined on a scale of 2 grades"):
        create_formulation("soft_labels", {}, num_classes=2)
    with pytest.raises(BenchError, match="at least two groups"):
        create_formulation("mtl", {"groups": [[0], [1]]}, num_classes=2)
