"""The Python API, for notebooks and scripts: `import benchmark as mb`.

    run = mb.load_run("runs/smoke")           # read-only; no torch imported
    run.metrics                               # the long-format rows `bench report --csv` writes
    run.predictions                           # one row per image, split and cell
    run.cells                                 # one row per expected cell: state, timings, configuration
    rep = mb.report(run, view="default", test="wilcoxon")
    rep.tables["Table 1 — …"]                 # each table as a DataFrame, the cells the Markdown prints
    rep.figures["confusion matrices, tiny"]   # matplotlib Figures
    mb.run_suite("suites/smoke.yaml", out="runs/smoke", only=["formulation=softmax"])

`bench run` and `bench report` are a thin layer over these calls: the same checks, the same numbers. Reading a run
(load_run, report) imports neither torch nor timm; run_suite trains, and imports them."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BenchError

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from reports.load import Run as LoadedRun
    from reports.render import Report as BuiltReport
    from reports.table import Options

    from .run.runner import Runner, RunReport
    from .suite.schema import Suite

__all__ = ["Report", "Run", "load_run", "report", "run_suite"]


class Run:
    """A finished (or partly finished) run directory, read-only. Cheap to make: every frame is read on first use."""

    def __init__(self, loaded: LoadedRun):
        self._run = loaded

    @property
    def path(self) -> Path:
        return self._run.path

    @property
    def suite(self) -> Suite:
        """The suite as it was run (with its variant axes)."""
        return self._run.stored_suite

    @property
    def classes(self) -> tuple[str, ...]:
        """The run's grade names, in order (grade g is `classes[g]`)."""
        return tuple(self._run.scale.classes)

    @property
    def complete(self) -> bool:
        return bool(self._run.complete)

    @cached_property
    def metrics(self) -> pd.DataFrame:
        """Long format, one row per value: backbone, formulation, seed, fold, split, task, metric, cls, class, value —
        the rows `bench report RUN --csv` writes, in its order."""
        from reports.render import metrics_frame

        return metrics_frame(self._run)

    @cached_property
    def predictions(self) -> pd.DataFrame:
        """One row per image and finished cell: backbone, formulation, seed, fold, split (val, test,
        external:NAME), image_id, y_true, y_pred, the class probabilities p0 … p(K−1) (NaN where a formulation has
        none) and the cell's key."""
        cells = self._run.cells[self._run.cells.status == "done"][["key", "backbone", "formulation", "seed", "fold"]]
        preds = self._run.store.predictions_frame()
        preds = preds.drop(columns=[c for c in ("outputs",) if c in preds.columns])
        preds = cells.merge(preds, on="key")
        first = ["backbone", "formulation", "seed", "fold", "split", "image_id", "y_true", "y_pred"]
        return preds[first + [c for c in preds.columns if c not in first]].reset_index(drop=True)

    @cached_property
    def cells(self) -> pd.DataFrame:
        """One row per expected cell: its axes, key, status (done, failed, running, missing), error, and for a
        finished cell its timings (seconds training, evaluating, whole cell; epochs; best epoch; images per second),
        device, threads, batch size, input size and formulation options."""
        import pandas as pd

        rows = []
        for cell in self._run.cells.to_dict("records"):
            res = self._run.result(cell["key"]) if cell["status"] == "done" else None
            t = res.timings if res else {}
            rows.append(
                {
                    **cell,
                    "train_seconds": t.get("train_seconds"),
                    "eval_seconds": t.get("eval_seconds"),
                    "cell_seconds": t.get("cell_seconds"),
                    "epochs": t.get("epochs"),
                    "best_epoch": res.best_epoch if res else None,
                    "train_images_per_s": t.get("train_images_per_s"),
                    "device": res.device if res else None,
                    "threads": res.threads if res else None,
                    "batch_size": res.batch_size if res else None,
                    "input_size": tuple(res.input_size) if res and res.input_size else None,
                    "options": res.formulation_options if res else None,
                }
            )
        return pd.DataFrame(rows)

    def report(self, **options: Any) -> Report:
        """`mb.report(this run, **options)`."""
        return report(self, **options)

    def close(self) -> None:
        self._run.store.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        c = self._run.counts
        return (
            f"<mesbench Run {str(self.path)!r}: suite {self._run.suite.name!r}, {c['done']} done, "
            f"{c['failed']} failed, {c['missing']} missing of {len(self._run.cells)} cells>"
        )


def load_run(path: str | os.PathLike | None = None, store: str | None = None) -> Run:
    """A run directory written by `bench run` (None: the one under ./runs that finished last); `store`: a results
    store URL such as postgresql://… (default: MESBENCH_STORE, else RUN/results.db)."""
    from reports.load import load_run as _load

    return Run(_load(path, store))


@dataclass
class Report:
    """A built report: the numbers of `bench report` with the same options, as Python objects."""

    title: str
    header: list[str]
    warnings: list[str]
    _built: BuiltReport = field(repr=False)
    _run: Run = field(repr=False)

    @cached_property
    def tables(self) -> dict[str, pd.DataFrame]:
        """Each table by its number and title ("Table 1 — …"), its cells as the Markdown prints them (mean ± sd with
        the stars of its tests; bold is the Markdown's); a table's notes are in `DataFrame.attrs["notes"]`."""
        import pandas as pd

        out: dict[str, pd.DataFrame] = {}
        for t in self._built.tables:
            frame = pd.DataFrame(t.rows, columns=t.columns)
            frame.attrs["notes"] = list(t.notes)
            name, n = t.title, 2
            while name in out:  # two tables of one title (never in the shipped views): keep both
                name, n = f"{t.title} ({n})", n + 1
            out[name] = frame
        return out

    @cached_property
    def figures(self) -> dict[str, Figure]:
        """The view's figures by name, drawn on first use."""
        from reports.render import render_figures

        drawn: dict[str, Any] = render_figures(self._built, keep=True)  # Rendered PNGs, each with its Figure
        return {name: png.figure for name, png in drawn.items()}

    def to_markdown(self, figure_links: list[tuple[str, str]] | None = None) -> str:
        from reports.render import to_markdown

        return to_markdown(self._built, figure_links)

    def to_latex(self, standalone: bool = False) -> str:
        from reports.render import latex_document, to_latex

        return latex_document(self._built) if standalone else to_latex(self._built)

    def to_html(self) -> str:
        """One self-contained HTML file's text, figures embedded."""
        from reports.render import render_figures, to_html

        if not self._built.figures:
            self._built.figures = render_figures(self._built)
        return to_html(self._built)

    def write_figures(self, folder: str | os.PathLike, pdf: bool = True) -> list[Path]:
        """Every figure as FOLDER/<name>.png (and .pdf, for a paper); the paths written (to_html then embeds these,
        drawn once)."""
        from reports.render import render_figures, write_figure_files

        self._built.figures = render_figures(self._built, pdf=pdf)
        return write_figure_files(Path(folder), self._built.figures)

    def _repr_markdown_(self) -> str:  # Jupyter shows the report as it reads in a terminal's Markdown
        return self.to_markdown()


def report(
    run: Run | str | os.PathLike | None = None,
    *,
    view: str = "default",
    split: str | None = None,
    test: str | None = None,
    correction: str | None = None,
    alpha: float | None = None,
    backbone: str | None = None,
    reference: str | None = None,
    compare: str = "formulations",
    pairs: str = "reference",
    metric: str = "f1",
    summary: str = "default",
    patient_quantile: float = 1.0,
    specificity: float = 0.9,
    rope: float = 0.01,
    store: str | None = None,
    with_test: bool = True,
) -> Report:
    """The report `bench report RUN` prints with the same options (each keyword is the option of that name; None
    leaves a view's own setting in place)."""
    loaded = run if isinstance(run, Run) else load_run(run, store)
    opts = report_options(
        loaded._run, view=view, split=split, test=test, correction=correction, alpha=alpha, backbone=backbone,
        reference=reference, compare=compare, pairs=pairs, metric=metric, summary=summary,
        patient_quantile=patient_quantile, specificity=specificity, rope=rope,
    )  # fmt: skip
    return built_report(loaded, opts, with_test)


def built_report(run: Run, opts: Options, with_test: bool = True) -> Report:
    """The report of options `report_options` has already checked (`bench report` checks them before it makes a
    figure folder, then builds once)."""
    from reports.render import build

    built = build(run._run, opts, with_test=with_test)
    return Report(built.title, built.header, built.warnings, built, run)


def report_options(run: LoadedRun, **given: Any) -> Options:
    """The report's options, each checked against this run: one paragraph naming the option and its valid values."""
    from reports.axes import check_axis
    from reports.table import Options
    from reports.views import load_view

    from .errors import require_in_run

    choices = {
        "split": ("val", "test"),
        "test": ("auto", "wilcoxon", "permutation", "corrected-t", "ranksum", "bayes"),
        "correction": ("holm", "fdr_bh", "bonferroni", "none"),
        "pairs": ("reference", "all"),
        "metric": ("f1", "recall", "precision", "specificity", "auc"),
        "summary": ("default", "ordinal", "polat", "ra"),
    }
    for name, valid in choices.items():
        if given[name] is not None and given[name] not in valid:
            raise BenchError(f"--{name} {given[name]!r}: one of {', '.join(valid)}.")
    check_axis(run, given["compare"])
    if given["reference"] is not None:
        universe = {"formulations": run.formulations, "backbones": run.backbones}.get(given["compare"]) or list(
            run.stored_suite.variants[given["compare"]]
        )
        require_in_run("--reference", given["reference"], universe)
    if given["backbone"]:
        require_in_run("--backbone", given["backbone"], run.backbones)
    alpha = given["alpha"]
    if alpha is not None and not 0 < alpha < 1:
        raise BenchError(f"--alpha {alpha}: a significance level between 0 and 1, e.g. 0.05 or 0.1.")
    if not 0 < given["patient_quantile"] <= 1:
        raise BenchError(
            f"--patient-quantile {given['patient_quantile']}: a quantile in (0, 1]; 1 (the default) takes each "
            "patient's worst image grade, as clinicians score a colonoscopy."
        )
    if not 0 < given["specificity"] < 1:
        raise BenchError(
            f"--specificity {given['specificity']}: the specificity at which Table 8b reads each grade's sensitivity, "
            "strictly between 0 and 1, e.g. 0.9 or 0.95."
        )
    if not 0 <= given["rope"] < 1:
        raise BenchError(
            f"--rope {given['rope']}: a difference of the compared proportion below which two models count as "
            "practically equivalent, in [0, 1); 0.01 (the default) is one percentage point of macro F1."
        )
    if given["rope"] != 0.01 and given["test"] != "bayes":
        view = load_view(given["view"])
        settings = [view.statistics] + [s.statistics for s in view.sections]
        if not any(st is not None and st.test == "bayes" for st in settings):
            raise BenchError(
                f"--rope {given['rope']} changes only the Bayesian comparison, which this report does not hold: add "
                "--test bayes."
            )
    stated = ("split", "test", "correction", "alpha")
    return Options(
        split=given["split"] or "val",
        backbone=given["backbone"],
        reference=given["reference"],
        test=given["test"] or "auto",
        correction=given["correction"] or "holm",
        alpha=0.05 if alpha is None else alpha,
        explicit=frozenset(name for name in stated if given[name] is not None),
        metric=given["metric"],
        summary=given["summary"],
        view=given["view"],
        compare=given["compare"],
        pairs=given["pairs"],
        patient_quantile=given["patient_quantile"],
        rope=given["rope"],
        specificity=given["specificity"],
    )


def suite_from(suite: str | os.PathLike | Mapping[str, Any], overrides: Iterable[str] = ()) -> Suite:
    """A suite from its YAML file or from a dict of the same shape, `--set` overrides applied, checked as `bench run`
    checks it (data paths included)."""
    import copy

    from .suite.loading import apply_overrides, check_data_paths, load_suite, validate_suite

    if isinstance(suite, Mapping):
        source = "<suite dict>"
        doc = apply_overrides(copy.deepcopy(dict(suite)), list(overrides), Path(source))
        checked = validate_suite(doc, source)
        check_data_paths(checked, doc, source)
        return checked
    return load_suite(suite, list(overrides), paths=True)


def execute(
    suite: Suite,
    out: Path,
    *,
    only: Iterable[str] = (),
    device: str | None = None,
    store: str | None = None,
    retry_failed: bool = False,
    log: Iterable[str] = (),
    progress: Any = None,
) -> tuple[Runner, RunReport]:
    """Train the suite's cells that are not done yet into OUT: the one path `bench run` and `run_suite` take."""
    from .run.runner import Runner

    runner = Runner(suite, out, device=device, retry_failed=retry_failed, store=store)
    if log:
        from .run.tracking import make_trackers

        runner.trackers = make_trackers(list(log), out)
    if progress is not None:
        runner.progress = progress
    cells = runner.prepare(list(only))
    if progress is not None:
        progress.set_total(len(cells))
        if runner.stale_cells:
            progress.note(
                f"[yellow]note[/]: the suite changed since this directory was last used: "
                f"{runner.new_cells} cell(s) have a new configuration hash and will be trained; "
                f"{runner.stale_cells} cell(s) of the earlier configuration are kept but not reported."
            )
    return runner, runner.run(list(only))


def run_suite(
    suite: str | os.PathLike | Mapping[str, Any],
    out: str | os.PathLike | None = None,
    *,
    only: Iterable[str] = (),
    set: Iterable[str] = (),
    device: str | None = None,
    store: str | None = None,
    retry_failed: bool = False,
    log: Iterable[str] = (),
    threads: int | None = None,
    yes: bool = False,
) -> Run:
    """`bench run` from Python: train what is not done yet (a killed run resumes), then the run, loaded. `suite` is a
    YAML path or a dict of the same shape; `only`, `set`, `log` take what the options of those names take."""
    from .run.threads import set_threads
    from .suite.loading import check_size

    checked = suite_from(suite, set)
    check_size(checked, yes)
    set_threads(threads, 1)
    target = Path(out) if out is not None else Path("runs") / checked.name
    _, outcome = execute(checked, target, only=only, device=device, store=store, retry_failed=retry_failed, log=log)
    if outcome.failed:
        import warnings

        warnings.warn(
            f"{len(outcome.failed)} cell(s) of {checked.name} failed; `run.cells` holds their errors; "
            "run_suite(..., retry_failed=True) trains them again.",
            stacklevel=2,
        )
    return load_run(target, store)


def catalogue() -> dict[str, list[dict[str, str]]]:
    """What a suite and a report can name, from the registries themselves: backbones, formulations (with their
    papers and options), datasets, metrics, statistical tests, corrections and report sections. `bench list` prints
    it and the documentation's reference pages are generated from it, so neither can drift from the code."""
    from backbones import BACKBONES, list_backbones
    from formulations import FINETUNE_SUFFIXES, FORMULATIONS
    from reports.sections import NEEDS, SECTIONS
    from reports.stats import BAYES_TESTS, CORRECTIONS, TESTS

    from .data.catalogue import DATASETS
    from .metrics import COUNTS, DESCRIPTIONS, LOWER_IS_BETTER

    def options(cls) -> str:
        fields = getattr(cls.Options, "model_fields", {})
        return ", ".join(f"{n} = {f.default!r}" for n, f in fields.items()) or "—"

    return {
        "backbones": [
            {
                "name": b.name,
                "timm model": b.timm_name if b.builder is None else "— (its own module)",
                "input size": "native" if not b.input_size else "×".join(map(str, b.input_size)),
                "default batch": str(b.batch_size or "suite"),
                "from": BACKBONES.origin(b.name),
            }
            for b in list_backbones()
        ],
        "formulations": [
            {
                "name": name,
                "what": cls.description,
                "reference": cls.reference_text,
                "options": options(cls),
                "from": FORMULATIONS.origin(name),
            }
            for name, cls in FORMULATIONS.items()
        ],
        "fine-tuning": [
            {"suffix": suffix, "finetune": mode, "what": f"X{suffix} = {{name: X, finetune: {mode}}}"}
            for suffix, mode in FINETUNE_SUFFIXES.items()
        ],
        "datasets": [{"name": name} for name in sorted(DATASETS)],
        "metrics": [
            {
                "name": name,
                "what": what,
                "better": "lower" if name in LOWER_IS_BETTER else "—" if name in COUNTS else "higher",
            }
            for name, what in DESCRIPTIONS.items()
        ],
        "tests": [{"name": name, "what": what} for name, what in {**TESTS, **BAYES_TESTS}.items()],
        "corrections": [{"name": name, "what": what} for name, what in CORRECTIONS.items()],
        "report sections": [
            {
                "name": name,
                "what": sec.description,
                "reads": "; ".join(NEEDS[n] for n in sec.needs) or "the cells' stored results",
                "module": sec.build.__module__,
                "from": SECTIONS.origin(name),
            }
            for name, sec in SECTIONS.items()
        ],
    }
