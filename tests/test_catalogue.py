"""The ordinal catalogue from dlordinal: each loss equals the package's own (or its paper's formula) on fixed
inputs, unit class weights give the unweighted loss, the decoding rules do what they say, and each new metric
equals an independent implementation."""

import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from benchmark.cli import main
from benchmark.errors import BenchError
from benchmark.metrics import ece, per_class_mae, probability_rows, rps
from formulations import FORMULATIONS, create_formulation
from formulations.base import decode_probabilities

NEW = ["cdw_ce", "sord", "soft_labels", "clm", "emd", "wk", "ecoc"]


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(24, 4), torch.tensor([0, 1, 2, 3] * 6)


def test_cdw_ce_equals_dlordinal_and_the_papers_formula(batch):
    from dlordinal.losses import CDWCELoss

    x, y = batch
    for alpha in (0.5, 5.0):
        f = create_formulation("cdw_ce", {"alpha": alpha})
        assert torch.allclose(f.loss(x, y), CDWCELoss(4, alpha=alpha)(x, y))
        p = x.softmax(1)
        dist = (torch.arange(4)[None, :] - y[:, None]).abs().float() ** alpha
        formula = -(torch.log(1 - p + 1e-8) * dist).sum(1).mean()  # −Σ_{i≠c} log(1 − p_i)·|i − c|^α
        assert torch.allclose(f.loss(x, y), formula, rtol=1e-4)
    margin = create_formulation("cdw_ce", {"alpha": 5.0, "margin": 0.05})
    assert torch.allclose(margin.loss(x, y), CDWCELoss(4, alpha=5.0, margin=0.05)(x, y))


def test_soft_label_losses_equal_dlordinal(batch):
    import dlordinal.losses as L
    from torch import nn

    x, y = batch
    for dist, cls in (
        ("beta", L.BetaLoss),
        ("triangular", L.TriangularLoss),
        ("binomial", L.BinomialLoss),
        ("poisson", L.PoissonLoss),
        ("exponential", L.ExponentialLoss),
        ("geometric", L.GeometricLoss),
    ):
        eta = 0.85 if dist == "poisson" else 1.0  # the defaults
        f = create_formulation("soft_labels", {"distribution": dist})
        assert torch.allclose(f.loss(x, y), cls(base_loss=nn.CrossEntropyLoss(), num_classes=4, eta=eta)(x, y)), dist
    sord = create_formulation("sord", {"alpha": 2.0, "metric": "abs"})
    assert torch.allclose(sord.loss(x, y).float(), L.SORDLoss(2.0, 4, torch.arange(4))(x, y).float())


def test_sord_metric_changes_the_loss_and_each_equals_its_formula(batch):
    """φ = |i − c|² (the paper's, the default) and |i − c|: target softmax(−α·φ), loss the CE to it."""
    x, y = batch
    grades = torch.arange(4).float()
    losses = {}
    for metric, phi in (("squared", lambda d: d**2), ("abs", lambda d: d)):
        target = torch.softmax(-2.0 * phi((grades[None, :] - y[:, None].float()).abs()), 1)
        expected = -(target * torch.log_softmax(x.float(), 1)).sum(1).mean()
        losses[metric] = create_formulation("sord", {"alpha": 2.0, "metric": metric}).loss(x, y).float()
        assert torch.allclose(losses[metric].float(), expected, atol=1e-6), metric
    assert not torch.allclose(losses["squared"], losses["abs"])
    assert torch.allclose(create_formulation("sord", {"alpha": 2.0}).loss(x, y).float(), losses["squared"])
    with pytest.raises(BenchError, match="metric"):
        create_formulation("sord", {"ftype": "square"})


def test_soft_label_targets_are_unimodal_at_the_true_grade_or_refused():
    from dlordinal.soft_labelling import get_poisson_soft_labels

    from formulations.soft_labels import soft_targets

    q = get_poisson_soft_labels(4)
    assert np.argmax(q[0]) == 0 and q[0, 0] == pytest.approx(q[0, 1])  # dlordinal's own rows: a shared top
    f = create_formulation("soft_labels", {"distribution": "poisson"})
    t = soft_targets("poisson", f.options["eta"])
    np.testing.assert_allclose(t, (1 - 0.85) * np.eye(4) + 0.85 * q)
    for c in range(4):  # the default peaks strictly at the true grade and falls away from it
        assert all(t[c, c] > t[c, j] for j in range(4) if j != c)
        assert np.all(np.diff(t[c, : c + 1]) >= 0) and np.all(np.diff(t[c, c:]) <= 0)
    with pytest.raises(BenchError, match="not unimodal at the true grade"):
        create_formulation("soft_labels", {"distribution": "poisson", "eta": 1.0})


def test_emd_wk_ecoc_clm_equal_dlordinal_or_their_formula(batch):
    import dlordinal.losses as L
    from dlordinal.output_layers import CLM

    x, y = batch
    cdf = torch.cumsum(x.softmax(1), 1) - torch.cumsum(torch.nn.functional.one_hot(y, 4).float(), 1)
    assert torch.allclose(create_formulation("emd").loss(x, y), (cdf**2).sum(1).mean())
    assert torch.allclose(create_formulation("emd").loss(x, y), L.EMDLoss(4)(x, y))
    assert torch.allclose(create_formulation("wk").loss(x, y), L.WKLoss(4, use_logits=True)(x, y))
    t = x[:, :3]
    assert torch.allclose(create_formulation("ecoc").loss(t, y), L.OrdinalECOCDistanceLoss(4)(torch.sigmoid(t), y) / 24)
    torch.manual_seed(1)
    clm = create_formulation("clm", {"link": "probit"})
    head = clm.head(5).eval()
    p = head(torch.randn(24, 5))
    assert isinstance(head[-1], CLM) and torch.allclose(p.sum(1), torch.ones(24), atol=1e-5)
    assert torch.allclose(clm.loss(p, y), -torch.log(p[torch.arange(24), y]).mean(), rtol=1e-5)


@pytest.mark.parametrize("name", NEW)
def test_unit_class_weights_give_the_unweighted_loss(name, batch):
    x, y = batch
    f = create_formulation(name)
    if name == "clm":
        x = x.softmax(1)
    if name == "ecoc":
        x = x[:, :3]
    ref = f.loss(x, y)
    for w in (torch.ones(4), torch.full((4,), 3.0)):
        assert torch.allclose(f.loss(x, y, {"mes": w}).float(), ref.float(), rtol=1e-5, atol=1e-6), name
    heavier = f.loss(x, y, {"mes": torch.tensor([1.0, 1.0, 1.0, 5.0])})
    assert not torch.allclose(heavier.float(), ref.float()), name


def test_decoding_rules_on_constructed_distributions():
    p = np.array(
        [
            [0.40, 0.05, 0.05, 0.50],  # mode 3, median 3 (cum .4,.45,.5), mean 1.7 -> 2
            [0.30, 0.30, 0.25, 0.15],  # mode 0, median 1, mean 1.25 -> 1
            [0.10, 0.20, 0.30, 0.40],
        ]
    )  # mode 3, median 2, mean 2.0 -> 2
    assert decode_probabilities(p, "argmax").tolist() == [3, 0, 3]
    assert decode_probabilities(p, "median").tolist() == [2, 1, 2]
    assert decode_probabilities(p, "expectation").tolist() == [2, 1, 2]
    for name in ("softmax", "coral", "corn", "cdw_ce", "mtl"):  # every formulation with probabilities takes it
        assert "decoding" in FORMULATIONS[name].Options.model_fields, name


def test_new_metrics_equal_independent_implementations():
    from dlordinal.metrics import amae, mmae, ranked_probability_score
    from torchmetrics.classification import MulticlassCalibrationError

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    p = rng.dirichlet(np.ones(4) * 0.7, 300)
    pred = p.argmax(1)
    assert np.mean(per_class_mae(y, pred)) == pytest.approx(amae(y, pred))
    assert np.max(per_class_mae(y, pred)) == pytest.approx(mmae(y, pred))
    assert rps(y, p) == pytest.approx(ranked_probability_score(y, p))
    tm = MulticlassCalibrationError(num_classes=4, n_bins=10, norm="l1")
    assert ece(y, p) == pytest.approx(float(tm(torch.tensor(p, dtype=torch.float32), torch.tensor(y))), abs=1e-6)
    rows = {(t, m, c): v for t, m, c, v in probability_rows(y, p)}
    for k in range(4):  # AUC = Mann–Whitney U / (n1·n0), an independent route
        pos, neg = p[y == k, k], p[y != k, k]
        u = stats.mannwhitneyu(pos, neg).statistic
        assert rows["mes", "auc", str(k)] == pytest.approx(u / (len(pos) * len(neg)))
    active = p[:, 2:].sum(1)
    u = stats.mannwhitneyu(active[y >= 2], active[y < 2]).statistic
    assert rows["ra", "auc", ""] == pytest.approx(u / ((y >= 2).sum() * (y < 2).sum()))


def test_the_ordinal_smoke_suite_runs_and_reports_the_ordinal_view(tmp_path, capsys):
    out = tmp_path / "ord"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no deprecated dlordinal API on our path
        assert (
            main(
                [
                    "run",
                    "suites/ordinal-smoke.yaml",
                    "--out",
                    str(out),
                    "--quiet",
                    "--only",
                    "fold=0",
                    "--set",
                    "training.epochs=2",
                    "--set",
                    "dataset.params.size=[32, 32]",
                    "--set",
                    "dataset.params.n_images=240",
                ]
            )
            == 0
        )
    capsys.readouterr()
    assert main(["report", str(out), "--summary", "ordinal", "--metric", "auc"]) == 0
    md = capsys.readouterr().out
    table1 = md.split("## Table 1")[1].split("\n## ")[0]
    assert "AMAE" in table1 and "MMAE" in table1 and "RPS" in table1 and "ECE" in table1
    table2 = md.split("## Table 2")[1].split("\n## ")[0]
    assert "per-class one-vs-rest AUC" in table2
    assert table2.splitlines()[2].startswith("| formulation |")  # 17 formulations: transposed, one row each
    assert all(f"| {name} " in table2 for name in ("cdw_ce", "sord", "clm", "emd", "wk", "ecoc"))
    from benchmark.tools.explain import explain

    new = ["cdw_ce", "sord", "soft_labels[beta]", "clm", "emd", "wk", "ecoc", "softmax[median]"]
    _, results, flat = explain(out, formulations=new, per_class=1, out=tmp_path / "cam")
    for name in new:  # Grad-CAM works for every new formulation, through its own gradcam_scores
        maps, pred = results[name]
        assert maps.shape[0] == len(flat) and maps.min() >= 0 and maps.max() <= 1, name


def test_bench_list_shows_every_formulation_with_its_reference(capsys):
    assert main(["list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for name in NEW:
        assert name in out
    for ref in ("Polat", "Díaz", "Vargas", "Hou", "de la Torre", "Barbero"):
        assert ref in out, ref
