"""The design of a comparison: which values of a run are independent pairing units, how a paired test treats
them, and the legend that says so under every table with stars."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.errors import BenchError

from .load import Run
from .stats import CORRECTIONS, TESTS, paired_test, significance_possible, smallest_p
from .table import Options, aligned


@dataclass
class Design:
    """Which values of a run are independent pairing units, and how a paired test must treat them.

    A value in the long table is indexed by (seed, fold), where `fold` numbers every resample of the
    run: repeat r, fold j of a repeated k-fold is fold r·k + j; a Monte-Carlo protocol (polat) numbers its
    overlapping random splits. Seeds and repeats re-use the same images, so they are not independent:
    rank and permutation tests get one value per fold index (the mean over seeds and repeats), and the
    corrected t-test gets one value per resample (mean over seeds) with the Bouckaert–Frank correction."""

    split: str
    test: str  # resolved: never "auto"
    monte_carlo: bool
    k: int  # folds per repeat (k-fold) or number of splits (Monte-Carlo)
    repeats: int
    seeds: int
    sizes: dict[int, tuple[int, int]]  # resample -> (n_train, n_val)
    n_test: int

    @classmethod
    def of(cls, run: Run, opts: Options) -> Design:
        proto = run.suite.protocol
        monte_carlo = proto.kind == "polat"
        n_folds = int(run.meta.get("n_folds") or 0)
        repeats = 1 if monte_carlo else proto.repeats
        k = n_folds if monte_carlo else max(n_folds // max(repeats, 1), 1)
        test = opts.test
        if test in ("auto", "bayes"):  # bayes adds posterior tables; the stars stay frequentist (auto)
            test = "corrected-t" if monte_carlo else "wilcoxon"
        if monte_carlo and test in ("wilcoxon", "permutation", "ranksum"):
            raise BenchError(
                f"--test {test}: this run uses Monte-Carlo splits (protocol 'polat'), whose validation "
                "sets overlap, so no set of them is independent and a rank or permutation test over "
                "them would be anticonservative. Use --test corrected-t (Nadeau–Bengio), or auto."
            )
        sizes = {int(f): (int(a), int(b)) for f, (a, b) in (run.meta.get("fold_sizes") or {}).items()}
        if not sizes:  # runs written before fold sizes were recorded: read them from the cells
            for r in run.cells[run.cells.status == "done"].drop_duplicates("fold").itertuples():
                res = run.result(r.key)
                if res.n_train:
                    sizes[int(r.fold)] = (res.n_train, res.n_val)
        n_test = int((run.meta.get("dataset") or {}).get("n_test") or 0)
        return cls(opts.split, test, monte_carlo, k, repeats, len(run.suite.training.seeds), sizes, n_test)

    def units(self, x: pd.Series, y: pd.Series):
        """Paired vectors for the test, and the test-to-train size ratio for the corrected t."""
        x, y = aligned(x, y)
        if len(x) == 0:
            return np.array([]), np.array([]), None
        folds = x.index.get_level_values("fold").to_numpy()
        if self.test == "corrected-t":
            a, b = x.groupby(level="fold").mean(), y.groupby(level="fold").mean()
            ratios = [self._ratio(int(f)) for f in a.index]
            ratios = [r for r in ratios if r is not None]
            return a.to_numpy(), b.to_numpy(), (float(np.mean(ratios)) if ratios else None)
        unit = folds % self.k
        a = x.groupby(unit).mean()
        b = y.groupby(unit).mean()
        return a.to_numpy(), b.to_numpy(), None

    def _ratio(self, fold):
        if fold not in self.sizes:
            return None
        n_train, n_val = self.sizes[fold]
        n_eval = n_val if self.split == "val" else self.n_test
        return n_eval / n_train if n_train else None

    def p_value(self, x: pd.Series, y: pd.Series) -> float:
        a, b, ratio = self.units(x, y)
        if len(a) < 2:
            return np.nan
        if self.test == "corrected-t":
            if ratio is None:
                raise BenchError(
                    "the corrected t-test needs each fold's training and validation sizes, which this "
                    "run does not record; use --test wilcoxon or permutation."
                )
            return paired_test(a, b, "corrected-t", 1.0, ratio)
        return paired_test(a, b, self.test)

    @property
    def n_units(self) -> int:
        if self.test == "corrected-t":
            return self.k * self.repeats
        return self.k

    def unit_text(self) -> str:
        extra = []
        if self.repeats > 1:
            extra.append(f"{self.repeats} repeats")
        if self.seeds > 1:
            extra.append(f"{self.seeds} seeds")
        if self.test == "ranksum":
            per = f", each the mean over {' × '.join(extra)} of that fold index" if extra else ""
            return (
                f"none — unpaired: the two samples are the per-fold-index values of each side (n = {self.k} "
                f"each{per}); the fold pairing is ignored"
            )
        if self.test == "corrected-t":
            if self.monte_carlo:
                return (
                    f"Monte-Carlo split (n = {self.k} overlapping splits"
                    + (f", each the mean over {self.seeds} seeds" if self.seeds > 1 else "")
                    + "); variance corrected for the overlap (Nadeau–Bengio), df = n − 1"
                )
            core = f"resample (n = {self.k * self.repeats} = {self.repeats} × {self.k} folds"
            return (
                core
                + (f", each the mean over {self.seeds} seeds" if self.seeds > 1 else "")
                + "); variance corrected for overlapping training sets ("
                + ("Bouckaert–Frank repeated k-fold" if self.repeats > 1 else "Nadeau–Bengio")
                + "), df = n − 1"
            )
        if extra:
            return f"fold index (n = {self.k}; each value the mean over {' × '.join(extra)} of that fold index)"
        return f"fold (n = {self.k})"

    def split_text(self) -> str:
        return (
            "validation folds (each fold's model on its own validation part)"
            if self.split == "val"
            else "held-out test set (each fold's model on the same test images)"
        )


def legend(
    opts: Options,
    design: Design,
    m: int,
    reference: str | None,
    subject="Stars: {paired} comparison with",
    family="the {m} comparisons of this table",
) -> str:
    """What a star means in this table, and when stars are impossible or unreliable at this n. `reference` is
    what the stars were computed against (None: every pair, or each row's own reference, said by `subject`)."""
    subject = subject.format(paired="unpaired" if design.test == "ranksum" else "paired")
    head = f"{subject} {reference}" if reference is not None else subject
    text = (
        f"{head} on the {design.split_text()}. Pairing unit: {design.unit_text()}. "
        f"Test: {TESTS[design.test]}; correction: {CORRECTIONS[opts.correction]} over "
        f"{family.format(m=m)}; α = {opts.alpha}; * p < {opts.alpha:g}, ** p < {opts.alpha / 5:g}, "
        f"*** p < {opts.alpha / 50:g}."
    )
    if m and not stars_allowed(opts, design, m):
        n = design.n_units
        floor = smallest_p(design.test, n)
        if design.test == "corrected-t":
            text += (
                f" NO STARS DRAWN: with n = {n} pairing units no distribution-free paired test can give p below "
                f"{floor:.4f}, so after the {CORRECTIONS[opts.correction]} correction over {m} comparisons no "
                f"difference could reach α = {opts.alpha} without resting wholly on the normality of {n} "
                "differences: significance is unreliable at this n, and the absence of stars says nothing about "
                "the absence of differences."
            )
        else:
            text += (
                f" NO STARS POSSIBLE: with n = {n} pairing units the smallest possible p of this test is "
                f"{floor:.4f}, so after the {CORRECTIONS[opts.correction]} correction over {m} comparisons no "
                f"difference can reach α = {opts.alpha}: the absence of stars says nothing about the absence of "
                "differences."
            )
    return text


def stars_allowed(opts: Options, design: Design, m: int) -> bool:
    return significance_possible(design.test, design.n_units, m, opts.correction, opts.alpha)
