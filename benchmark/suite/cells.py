"""A suite expanded into cells (backbone × formulation × one variant of every axis × fold × seed), each keyed by
a config hash.

The key hashes everything that changes a cell's result, so a changed configuration gets a new key
and is recomputed rather than mixed with old results. Fine-tuned formulations (`X+f1`) depend on
their stage-1 cell `X`, which is added when the suite does not list it and is never retrained.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import BackboneConfig, Combo, FormulationConfig, Suite, TrainingConfig, combo_text, stable_hash


@dataclass(frozen=True)
class Cell:
    backbone: BackboneConfig
    formulation: FormulationConfig
    fold: int
    seed: int
    key: str
    depends: str | None = None  # key of the stage-1 cell for a fine-tuned formulation
    listed: bool = True  # False for a stage-1 cell added only as a dependency
    variant: Combo = ()  # the variant of every ablation axis: ((axis, variant), ...)
    training: TrainingConfig | None = None  # the variant's training settings; None: the suite's

    @property
    def options(self) -> dict:
        """The formulation options this cell trains with (per-fold tuned options on top of the shared ones)."""
        f = self.formulation
        return {**f.options, **f.options_by_fold.get(self.fold, {})}

    @property
    def label(self) -> str:
        variant = f" · {combo_text(self.variant)}" if self.variant else ""
        return f"{self.backbone.name} · {self.formulation.display}{variant} · fold {self.fold} · seed {self.seed}"

    @property
    def display(self) -> str:
        """The formulation as a report row: its display name, with the variants where the suite has axes."""
        return variant_display(self.formulation, self.variant)


def variant_display(f: FormulationConfig, combo: Combo) -> str:
    """'softmax[lr=low]', 'mtl[lr=low]+f1' (the fine-tuning suffix stays last, so a stage 1 is found by name)."""
    if not combo:
        return f.display
    tag = f"[{combo_text(combo)}]"
    ends = ("+f1", "+ft", "+drw") if f.finetune else ("[stage 1]",)  # base() of a labelled stage 2 adds [stage 1]
    suffix = next((s for s in ends if f.display.endswith(s)), "")
    return f.display[: len(f.display) - len(suffix)] + tag + suffix


def protocol_hash(suite: Suite) -> str:
    return stable_hash({"dataset": suite.dataset.key(), "protocol": suite.protocol.model_dump(mode="json")})


def _key(suite, backbone, formulation, fold, seed, training_config: TrainingConfig | None = None):
    cfg = training_config or suite.training
    training = cfg.model_dump(mode="json", exclude={"checkpoint_every"})  # durability, not results
    training.pop("seeds")
    defaults = TrainingConfig().model_dump(mode="json")
    for name in TrainingConfig.KEYED_IF_SET:
        if training[name] == defaults[name]:
            del training[name]
    extra = {}  # keyed only when set, so that the keys of suites without them never change
    if suite.scale is not None:  # the binary split decides metrics a cell stores
        extra["scale"] = suite.scale.model_dump(mode="json")
    if suite.test_sets:  # a cell's result holds its predictions on every external test set
        extra["test_sets"] = [{**t.model_dump(mode="json"), "dataset": t.dataset.key()} for t in suite.test_sets]
    return stable_hash(
        {
            **extra,
            "protocol": protocol_hash(suite),
            "training": training,
            "backbone": _backbone_key(backbone),
            "formulation": _formulation_key(formulation, fold),
            "fold": fold,
            "seed": seed,
        },
        16,
    )


def _backbone_key(b: BackboneConfig) -> dict:
    """What of a backbone changes a cell: newer fields count only when set, so that old cells keep their keys;
    which layer Grad-CAM explains changes no result."""
    doc = b.model_dump(mode="json", exclude={"gradcam_layer"})
    for name in BackboneConfig.KEYED_IF_SET:
        if doc[name] == BackboneConfig.model_fields[name].default:
            del doc[name]
    return doc


def _formulation_key(f: FormulationConfig, fold: int) -> dict:
    """What of a formulation changes a cell: its options for this fold, never its label or provenance note.
    Fields at their defaults are left out so that adding a new optional field keeps old cells' keys."""
    doc = f.model_dump(mode="json", exclude={"label", "tuned", "options_by_fold"}, exclude_defaults=True)
    doc["options"] = {**f.options, **f.options_by_fold.get(fold, {})}
    doc.setdefault("name", f.name)
    return doc


def expand_cells(suite: Suite, n_folds: int) -> list[Cell]:
    """Stage-1 cells first, then fine-tuned ones, so a dependency is always trained before its user."""
    stage1: list[Cell] = []
    stage2: list[Cell] = []
    listed_base = {f.display for f in suite.formulations if not f.finetune}
    combos = suite.combos()
    trainings = {combo: suite.training_for(combo) for combo in combos}
    backbones = {combo: suite.backbones_for(combo) for combo in combos}
    for seed in suite.training.seeds:
        for b_index in range(len(suite.backbones)):
            for fold in range(n_folds):
                for combo in combos:
                    backbone = backbones[combo][b_index]
                    tc = trainings[combo]
                    run_tc = tc if combo else None
                    for f in suite.formulations:
                        key = _key(suite, backbone, f, fold, seed, tc)
                        if f.finetune:
                            base = f.base()
                            base_key = _key(suite, backbone, base, fold, seed, tc)
                            if base.display not in listed_base and all(
                                c.key != base_key or c.variant != combo for c in stage1
                            ):
                                stage1.append(Cell(backbone, base, fold, seed, base_key, None, False, combo, run_tc))
                            stage2.append(Cell(backbone, f, fold, seed, key, base_key, True, combo, run_tc))
                        else:
                            stage1.append(Cell(backbone, f, fold, seed, key, None, True, combo, run_tc))
    return stage1 + stage2


def unique_cells(cells: list[Cell]) -> list[Cell]:
    """One cell per key: variants whose settings coincide (e.g. two axes' `{}` variants) share their cells."""
    seen: set[str] = set()
    out = []
    for c in cells:
        if c.key not in seen:
            seen.add(c.key)
            out.append(c)
    return out


def select(cells: list[Cell], only: list[str]) -> list[Cell]:
    """`--only backbone=resnet18 --only formulation=mtl,softmax --only fold=0`; dependencies are kept."""
    from ..errors import BenchError

    wanted: dict[str, set[str]] = {}
    axes = list(dict.fromkeys(axis for c in cells for axis, _ in c.variant))
    for item in only or []:
        key, _, value = item.partition("=")
        if key not in ("backbone", "formulation", "fold", "seed", *axes) or not value:
            extra = "".join(f", {a}=VARIANT" for a in axes)
            raise BenchError(
                f"--only {item!r}: use backbone=NAME, formulation=NAME, fold=K or seed=S{extra} "
                "(comma-separated values allowed)."
            )
        wanted.setdefault(key, set()).update(value.split(","))

    def attrs(c: Cell):
        return {
            "backbone": c.backbone.name,
            "formulation": c.formulation.display,
            "fold": str(c.fold),
            "seed": str(c.seed),
            **dict(c.variant),
        }

    def keep(c: Cell):
        a = attrs(c)
        return all(a[k] in v for k, v in wanted.items())

    for key, values in wanted.items():
        valid = list(dict.fromkeys(attrs(c)[key] for c in cells))
        unmatched = sorted(values - set(valid))
        if unmatched:
            from ..errors import closest

            raise BenchError(
                f"--only {key}={unmatched[0]}: matches no cell of this suite — "
                f"{closest(unmatched[0], valid)}. Nothing was run."
            )

    chosen = [c for c in cells if keep(c)]
    needed = {c.depends for c in chosen if c.depends}
    deps = [c for c in cells if c.key in needed and c not in chosen]
    return deps + chosen


def longest_first(cells: list[Cell], cost) -> list[Cell]:
    """Pending cells ordered by their estimated cost, largest first (stage-1 cells still before the fine-tuned
    cells that need them), so a grid does not end with one long cell running while every other worker idles.
    `cost(cell)` is any number proportional to a cell's training time; ties keep the suite's order."""
    order = {id(c): i for i, c in enumerate(cells)}
    return sorted(cells, key=lambda c: (c.depends is not None, -cost(c), order[id(c)]))
