"""The suite schema: what a YAML suite may say, checked field by field (pydantic), names and options included."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..labels import MES, Scale

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # a finite number above 0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(Strict):
    name: str = "synthetic"
    root: str | None = None
    manifest: str | None = None
    class_dirs: list[str] = Field(default_factory=lambda: [f"Mayo {k}" for k in MES.grades])  # LIMUC's
    # (height, width), bounded as the synthetic size is: an image of 10⁵ × 10⁵ pixels is 30 GB of memory
    resize: tuple[Annotated[int, Field(ge=8, le=4096)], Annotated[int, Field(ge=8, le=4096)]] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    mmap: bool = False
    # Patients of a folder tree whose file names are not LIMUC's (`UC_patient_<id>_<n>`): a regular expression with a
    # named group `patient`, searched in each image's path relative to its class folder, or a CSV (path,patient)
    # whose paths are relative to `root` (as `class_dir/file`) or absolute.
    patient_pattern: str | None = None
    patients: str | None = None

    # Fields added after runs were stored: left out of the protocol's hash (and so of every cell's key) while unset.
    KEYED_IF_SET: ClassVar[tuple[str, ...]] = ("patient_pattern", "patients")

    def key(self) -> dict[str, Any]:
        """What of the dataset decides a run's splits and results, for hashing."""
        doc = self.model_dump(mode="json")
        for name in self.KEYED_IF_SET:
            if doc[name] is None:
                del doc[name]
        return doc

    @field_validator("patient_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        import re

        if v is None:
            return v
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"{v!r} is not a regular expression ({exc})") from None
        if "patient" not in compiled.groupindex:
            raise ValueError(
                f"{v!r} has no named group 'patient': write the part that names the patient as (?P<patient>...), "
                r"e.g. '(?P<patient>[^_/]+)_\d+' for p012_003.png or '(?P<patient>[^/]+)/' for per-patient folders"
            )
        return v

    @model_validator(mode="after")
    def _patients_of_a_folder(self) -> DatasetConfig:
        if self.patient_pattern is not None and self.patients is not None:
            raise ValueError("patient_pattern and patients: give one way to read the patients, not both")
        if (self.patient_pattern is not None or self.patients is not None) and self.name != "folder":
            raise ValueError(
                f"patient_pattern / patients are read by dataset 'folder' only (this one is {self.name!r}): a "
                "manifest has its group column, LIMUC its file names, the synthetic data its own patients"
            )
        return self

    @field_validator("class_dirs")
    @classmethod
    def _separate_folders(cls, v: list[str]) -> list[str]:
        """Each grade's folder is its own part of the root: two names for one folder (`c0` and `c0/`), the root
        itself, a folder inside another, or one outside the root would put one image under two grades (in train
        and test at once) or read files the suite does not own."""
        import posixpath

        if len(v) < 2:
            raise ValueError(
                f"needs a folder for each of at least two grades (got {v}); an ordinal scale has two or more grades"
            )
        norm: list[str] = []
        for name in v:
            n = posixpath.normpath(str(name).replace("\\", "/")) if str(name).strip() else "."
            if n == "." or n.startswith("/") or n == ".." or n.startswith("../"):
                raise ValueError(
                    f"{name!r}: a class folder is a sub-folder of dataset.root (not the root itself, an absolute "
                    "path, or a path leading out of it)"
                )
            for i, other in enumerate(norm):
                if n == other or n.startswith(other + "/") or other.startswith(n + "/"):
                    raise ValueError(
                        f"{v[i]!r} and {name!r} overlap (one folder, or one inside the other), so their images "
                        "would carry two grades at once; give each grade a folder of its own"
                    )
            norm.append(n)
        return norm


class ScaleConfig(Strict):
    """The suite's name for the data's grade scale (the report's wording): its name, its K grades in order, and
    where its clinically meaningful binary split lies (`binary_cut`: the first grade of the upper part; null:
    none). The data decides K; these names must be as many."""

    name: str = Field(min_length=1)
    classes: list[Annotated[str, Field(min_length=1)]] = Field(min_length=2)
    binary_cut: int | None = None
    binary_names: tuple[str, str] | None = None

    @model_validator(mode="after")
    def _valid(self) -> ScaleConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes: each grade named once (got {self.classes})")
        if self.binary_cut is not None and not 0 < self.binary_cut < len(self.classes):
            raise ValueError(
                f"binary_cut: {self.binary_cut} must split the grades 0..{len(self.classes) - 1} in two "
                f"(1 ≤ cut ≤ {len(self.classes) - 1}), or be null"
            )
        if self.binary_names is not None and self.binary_cut is None:
            raise ValueError("binary_names: names the two parts of binary_cut's split, which is not set")
        return self

    def scale(self) -> Scale:
        from ..labels import Scale

        low, high = self.binary_names or ("", "")
        return Scale(self.name, tuple(self.classes), self.binary_cut, (low, high))


class TestSetConfig(Strict):
    """An external test set: any dataset whose labels map onto the suite's grades through `label_map` (a folder or
    label → a grade of the suite's scale, by index or name, or null to drop those images). Without `label_map`
    its grades are the suite's, one for one. It only ever tests: no model, decoding or option is chosen on it."""

    __test__ = False  # not a pytest class
    name: str = Field(min_length=1, max_length=60)
    dataset: DatasetConfig
    # strict: YAML reads `true`/`false` as booleans, which must never become grades 1/0
    label_map: dict[StrictInt | StrictStr, StrictInt | StrictStr | None] | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        v = printable("test_sets name", v)
        if v in ("train", "val", "test") or ":" in v:
            raise ValueError(f"{v!r}: a test set's name must not be train, val or test, nor contain ':'")
        return v


class ProtocolConfig(Strict):
    kind: Literal["study", "grouped", "polat"] = "study"
    test_fraction: float = 0.15
    folds: int = Field(10, ge=2)
    repeats: int = Field(1, ge=1)
    seed: int = 0
    use_published_test: bool = False
    # polat: share of the non-test patients' images in each validation split
    val_fraction: float = Field(0.15, gt=0, lt=1, allow_inf_nan=False)
    # polat: accepted relative deviation of each class's validation share
    val_share_tolerance: float = Field(0.15, ge=0, allow_inf_nan=False)
    max_split_attempts: int = Field(1000, ge=1)

    @field_validator("test_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"test_fraction must lie strictly between 0 and 1 (got {v}); the study uses 0.15")
        return v


class CropConfig(Strict):
    """torchvision's RandomResizedCrop: an area fraction in `scale` and an aspect ratio (log-uniform) in `ratio`,
    resized back to the image's size."""

    scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.08, 1.0)
    ratio: tuple[Positive, Positive] = (3 / 4, 4 / 3)

    @model_validator(mode="after")
    def _ordered(self) -> CropConfig:
        for name in ("scale", "ratio"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: [low, high] with low ≤ high (got [{lo}, {hi}])")
        return self


class BlurConfig(Strict):
    """torchvision's GaussianBlur, applied with probability `p`: a sigma uniform in `sigma`, an odd kernel size."""

    kernel: int = Field(5, ge=3, le=31)
    sigma: tuple[Positive, Positive] = (0.1, 2.0)
    p: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _odd(self) -> BlurConfig:
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel: an odd size, as torchvision's GaussianBlur takes (got {self.kernel})")
        if self.sigma[0] > self.sigma[1]:
            raise ValueError(f"sigma: [low, high] with low ≤ high (got {list(self.sigma)})")
        return self


class AugmentConfig(Strict):
    """The training augmentation (the suite's top-level `augment:`); the defaults are the study's recipe:
    horizontal flip with probability 0.5, rotation uniform in ±180°, nothing else."""

    hflip: float = Field(0.5, ge=0, le=1)  # probability
    vflip: float = Field(0.0, ge=0, le=1)  # probability
    rotation: float = Field(180.0, ge=0, le=180)  # degrees: uniform in ±rotation
    resized_crop: CropConfig | None = None
    # brightness, contrast, saturation (factors uniform in [max(0, 1 − v), 1 + v]) and hue (shift in ±v, ≤ 0.5)
    color_jitter: (
        tuple[
            Annotated[float, Field(ge=0, allow_inf_nan=False)],
            Annotated[float, Field(ge=0, allow_inf_nan=False)],
            Annotated[float, Field(ge=0, allow_inf_nan=False)],
            Annotated[float, Field(ge=0, le=0.5)],
        ]
        | None
    ) = None
    blur: BlurConfig | None = None
    # Batch mixing (torchvision's MixUp / CutMix pairing, λ ~ Beta(mix_alpha, mix_alpha)); the loss is
    # λ·L(y) + (1 − λ)·L(y of the paired image), the loss of the mixed soft target wherever the loss is a mean of
    # per-image losses linear in the target (a formulation whose loss is not says so, and is refused).
    mix: Literal["none", "mixup", "cutmix", "resizemix"] = "none"
    mix_alpha: float = Field(1.0, gt=0, allow_inf_nan=False)  # mixup, cutmix
    # resizemix: the pasted image's side, as a fraction of the image's, uniform in this range (Qin et al. 2020)
    mix_scale: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] = (0.1, 0.8)

    @property
    def beyond_study(self) -> bool:
        """Whether anything but the study's two transforms is on (which draws more random numbers)."""
        return bool(self.vflip or self.resized_crop or self.color_jitter or self.blur or self.mix != "none")

    @model_validator(mode="after")
    def _alpha_only_with_mixing(self) -> AugmentConfig:
        if self.mix not in ("mixup", "cutmix") and self.mix_alpha != 1.0:
            raise ValueError(
                f"mix_alpha: used only with mix: mixup or cutmix (not {self.mix}), so it would change nothing"
            )
        if self.mix != "resizemix" and tuple(self.mix_scale) != (0.1, 0.8):
            raise ValueError(f"mix_scale: used only with mix: resizemix (not {self.mix}), so it would change nothing")
        if self.mix_scale[0] > self.mix_scale[1]:
            raise ValueError(f"mix_scale: [low, high] with low ≤ high (got {list(self.mix_scale)})")
        return self


class TrainingConfig(Strict):
    epochs: int = Field(200, ge=1)
    lr: float = Field(2e-4, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    batch_size: int = Field(32, ge=2)
    eval_batch_size: int = Field(256, ge=1)
    early_stopping: int = Field(25, ge=1)
    plateau_patience: int = Field(15, ge=0)
    plateau_factor: float = Field(0.2, gt=0, lt=1)
    monitor: Literal["val_loss", "val_accuracy", "val_macro_f1", "val_qwk"] = "val_loss"
    sampler: Literal["none", "weighted"] = "none"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int], info: ValidationInfo) -> list[int]:
        twice = sorted({s for s in v if v.count(s) > 1})
        if twice and not (info.context and info.context.get("stored")):  # a stored run is read as it ran
            raise ValueError(
                f"seed(s) {twice} listed twice: a seed trains the same cells again, and a mean over a repeated seed "
                "understates the spread; list each seed once"
            )
        return v

    compile: bool = False  # torch.compile the model (inductor; CPU or CUDA)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # autocast: auto = bf16/fp16 on CUDA, off on the CPU
    deterministic: bool = False  # deterministic algorithms only (CUDA: also CUBLAS_WORKSPACE_CONFIG)
    keep: Literal["best", "last"] = "best"  # checkpoints kept once a cell is finished (last: also last.pt)
    finetune_lr: float = Field(2e-5, ge=0, allow_inf_nan=False)
    finetune_epochs: int | None = Field(None, ge=1)  # None: same as epochs
    # Seconds of training between resume checkpoints (last.pt), written in the background; 0: every epoch. An
    # epoch longer than this saves every epoch. Changes what a kill can lose, never a result (not in cell keys).
    checkpoint_every: float = Field(60.0, ge=0, le=86_400, allow_inf_nan=False)
    # Stage-1 loss weights from the fold's training class counts (per task): none, 1/n_c, or the effective number
    # of samples (Cui et al. 2019) with class_weights_beta. The fine-tuning stages set their own.
    class_weights: Literal["none", "inverse_frequency", "effective_number"] = "none"
    class_weights_beta: float = Field(0.999, gt=0, lt=1, allow_inf_nan=False)
    # The suite's top-level `augment:` lives here, so that variants, cell keys and the cell's settings carry it
    # like every other training setting; a suite writes it at the top level.
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    # Fields added after runs were stored: left out of a cell's key while at their default (see cells._key).
    KEYED_IF_SET: ClassVar[tuple[str, ...]] = ("class_weights", "class_weights_beta", "augment")

    @model_validator(mode="after")
    def _beta_only_with_effective_number(self) -> TrainingConfig:
        default = type(self).model_fields["class_weights_beta"].default  # a stored suite sets every field
        if self.class_weights != "effective_number" and self.class_weights_beta != default:
            raise ValueError(
                f"class_weights_beta: used only by class_weights: effective_number (this suite has "
                f"{self.class_weights!r}), so it would change nothing; drop it or set class_weights: effective_number"
            )
        return self


class BackboneConfig(Strict):
    name: str
    batch_size: int | None = Field(None, ge=2)
    pretrained: bool = False
    weights: str | None = None
    # native: the images' own size (fixed-size models such as ViT/Swin are built for it through timm's img_size);
    # model: resized to the weights' own input size (timm's pretrained_cfg); [H, W]: resized to that; None: the
    # registry's default for the backbone, else native.
    input_size: (
        Literal["native", "model"]
        | tuple[Annotated[int, Field(ge=8, le=4096)], Annotated[int, Field(ge=8, le=4096)]]
        | None
    ) = None
    normalise: Literal["fold", "pretrained"] = "fold"  # fold: the fold's own training statistics (the study's)
    freeze: Literal["none", "all"] = "none"  # all: a linear probe on frozen features
    lr_decay: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)  # layer-wise lr decay, as timm's
    gradcam_layer: str | None = None  # a module of the backbone, e.g. blocks.11.norm1; None: chosen per family

    # Fields added after runs were stored: left out of a cell's key while at their default, so old cells keep
    # their keys (see cells._key).
    KEYED_IF_SET: ClassVar[tuple[str, ...]] = ("normalise", "freeze", "lr_decay")

    @field_validator("name")
    @classmethod
    def _known(cls, v: str, info: ValidationInfo) -> str:
        from backbones import BACKBONES, unknown_backbone

        if info.context and info.context.get("stored"):
            return v  # a suite read back from a run's store was checked when it ran; reports stay torch-free
        if ":" in v:  # a user's factory, `package.module:function`: importable, or refused here
            from backbones import factory_spec

            from ..errors import BenchError

            try:
                factory_spec(v)
            except BenchError as exc:
                raise ValueError(str(exc).removesuffix(".")) from None
            return v
        if v not in BACKBONES:  # timm is imported only for a name the registry does not know
            import timm

            if v not in timm.list_models():
                raise ValueError(str(unknown_backbone(v)).removesuffix("."))
        return v


FINETUNE_SUFFIX = {"inverse_f1": "+f1", "plain": "+ft", "drw": "+drw"}


class FinetuneOptions(Strict):
    """The fine-tuning stage: `inverse_f1` re-weights the loss by 1/F1 per class, `plain` is its control
    (the identical stage 2 without weights), `drw` is deferred re-weighting (Cao et al. 2019): the identical stage 2
    with effective-number weights of the training class counts (`beta`)."""

    lr: float | None = Field(None, ge=0, allow_inf_nan=False)  # None: training.finetune_lr
    epochs: int | None = Field(None, ge=1)  # None: training.finetune_epochs
    eps: float = Field(1e-3, gt=0, allow_inf_nan=False)  # F1 floor before inverting
    max_weight: float = Field(10.0, ge=1, allow_inf_nan=False)  # cap, as a multiple of the smallest weight
    task_weights: bool = False  # MTL: also re-weight alpha/beta/gamma by 1/macro-F1 of each task
    beta: float = Field(0.999, gt=0, lt=1, allow_inf_nan=False)  # drw: the effective-number β


class FormulationConfig(Strict):
    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    finetune: Literal["inverse_f1", "plain", "drw"] | None = None
    finetune_options: FinetuneOptions = Field(default_factory=FinetuneOptions)
    # Per-fold options (written by `bench tune`, which tunes each outer fold on its own training part).
    options_by_fold: dict[int, dict[str, Any]] = Field(default_factory=dict)
    tuned: str | None = None  # where tuned options came from, shown in report notes

    @field_validator("label")
    @classmethod
    def _printable_label(cls, v: str | None) -> str | None:
        return None if v is None else printable("label", v)

    @model_validator(mode="after")
    def _known_and_valid(self) -> FormulationConfig:
        from formulations import formulation_class

        from ..errors import BenchError

        try:
            cls = formulation_class(self.name)
            cls.validate_options(self.options)
            for extra in self.options_by_fold.values():
                cls.validate_options({**self.options, **extra})
        except BenchError as exc:
            raise ValueError(str(exc).removesuffix(".")) from None
        if self.finetune_options.beta != FinetuneOptions.model_fields["beta"].default and self.finetune != "drw":
            raise ValueError(
                f"finetune_options.beta: the effective-number β of finetune: drw (+drw); with finetune: "
                f"{self.finetune!r} it would change nothing"
            )
        return self

    @property
    def display(self) -> str:
        if self.label:
            return self.label
        return self.name + (FINETUNE_SUFFIX[self.finetune] if self.finetune else "")

    def base(self) -> FormulationConfig:
        """The stage-1 formulation a fine-tuned one starts from (never labelled like the fine-tuned one)."""
        label = None
        if self.label:
            suffix = FINETUNE_SUFFIX[self.finetune] if self.finetune else ""
            label = self.label[: -len(suffix)] if suffix and self.label.endswith(suffix) else f"{self.label}[stage 1]"
        return FormulationConfig(
            name=self.name, label=label, options=self.options, options_by_fold=self.options_by_fold, tuned=self.tuned
        )


RESERVED_AXES = ("backbone", "formulation", "fold", "seed")
# Training fields that are the run's, not a cell's: the seeds are an axis of their own, the numerics and what is
# kept are decided once per worker.
# What a variant may change of every backbone: how it is built and trained, never which model it is.
VARIANT_BACKBONE_FIELDS = ("input_size", "pretrained", "weights", "freeze", "lr_decay", "normalise", "batch_size")
RUN_WIDE_TRAINING = ("seeds", "amp", "deterministic", "keep", "checkpoint_every")

Combo = tuple[tuple[str, str], ...]  # one variant per axis: ((axis, variant), ...) in the suite's axis order


def combo_text(combo: Combo) -> str:
    return ",".join(f"{axis}={variant}" for axis, variant in combo)


def dataset_scale(d: DatasetConfig) -> Scale | None:
    """The grades a dataset's own text decides: the synthetic `classes`, a folder tree's `class_dirs`, LIMUC's MES;
    None where only the data can tell (a manifest's labels)."""
    from ..labels import MES, scale_of, unnamed_grades

    if d.name == "synthetic":
        classes = d.params.get("classes", 4)
        if isinstance(classes, list) and all(isinstance(c, str) for c in classes):
            return scale_of(classes)
        return scale_of(unnamed_grades(classes)) if isinstance(classes, int) and 2 <= classes <= 20 else None
    if d.name == "folder":
        return scale_of(d.class_dirs)
    if d.name == "limuc":
        return MES
    return None


class Suite(Strict):
    name: str = Field(min_length=1)
    description: str = ""
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    scale: ScaleConfig | None = None  # the grades' names; None: as the data names them
    test_sets: list[TestSetConfig] = Field(default_factory=list)  # external test sets (other centres)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)  # the training augmentation (study's recipe)
    backbones: list[BackboneConfig]
    formulations: list[FormulationConfig]
    # Ablation axes: axis -> variant -> dotted overrides of the suite, as `--set` takes them (training.* for now).
    # Cells are backbone × formulation × one variant of every axis × fold × seed; a variant's overrides enter its
    # cells' keys only through the settings they change, so a variant of no overrides shares the suite's cells.
    variants: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=dict)

    def declared_scale(self) -> Scale | None:
        """The grades the suite's own text decides: `scale:`, else the synthetic dataset's `classes`, a folder tree's
        `class_dirs`, LIMUC's MES; None where only the data can tell (a manifest's labels)."""

        if self.scale is not None:
            return self.scale.scale()
        return self.data_scale()

    def data_scale(self) -> Scale | None:
        """The grades the dataset's own text decides (see declared_scale), before the suite's `scale:` names them."""
        return dataset_scale(self.dataset)

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
        import re

        for axis, variants in v.items():
            if axis in RESERVED_AXES or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", axis):
                raise ValueError(
                    f"axis {axis!r}: an axis is a plain name (letters, digits, - and _) other than "
                    f"{', '.join(RESERVED_AXES)}, which are the grid's own axes; e.g. augment, weighting, lr"
                )
            if not variants:
                raise ValueError(f"axis {axis!r} has no variants; give at least one, e.g. {{study: {{}}}}")
            for name, overrides in variants.items():
                if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", str(name)):
                    raise ValueError(
                        f"axis {axis!r}, variant {name!r}: a variant is a plain name (letters, digits, . _ + -), "
                        "since `--only AXIS=VARIANT` and the report's labels carry it"
                    )
                for key in overrides or {}:
                    section, _, field = str(key).partition(".")
                    if section not in ("training", "augment", "backbone") or not field or "." in field:
                        raise ValueError(
                            f"axis {axis!r}, variant {name!r}: override {key!r} — a variant changes training "
                            "settings (training.FIELD, e.g. training.lr or training.class_weights), the "
                            "augmentation (augment.FIELD, e.g. augment.rotation) or every backbone's settings "
                            f"({', '.join('backbone.' + f for f in VARIANT_BACKBONE_FIELDS)}); the data, the "
                            "splits and the grid's own lists are shared by every variant (identical protocol)"
                        )
                    if section == "backbone" and field not in VARIANT_BACKBONE_FIELDS:
                        raise ValueError(
                            f"axis {axis!r}, variant {name!r}: override {key!r} — a variant may set "
                            f"{', '.join('backbone.' + f for f in VARIANT_BACKBONE_FIELDS)} (for every backbone of "
                            "the suite); the backbones themselves are the grid's own axis"
                        )
                    if section == "training" and field == "augment":
                        raise ValueError(
                            f"axis {axis!r}, variant {name!r}: override {key!r} — name the augmentation's fields "
                            "one by one, e.g. augment.rotation: 0 or augment.mix: mixup"
                        )
                    if field in RUN_WIDE_TRAINING:
                        raise ValueError(
                            f"axis {axis!r}, variant {name!r}: {key} is the run's, not a cell's "
                            f"({', '.join('training.' + f for f in RUN_WIDE_TRAINING)} are set once per suite)"
                        )
        return v

    @property
    def n_combos(self) -> int:
        """How many combinations there are, without building them."""
        from math import prod

        return prod(len(v) for v in self.variants.values())

    def combos(self) -> list[Combo]:
        """Every combination of one variant per axis (one empty combination without variants)."""
        from itertools import product

        axes = list(self.variants)
        return [tuple(zip(axes, names)) for names in product(*(list(self.variants[a]) for a in axes))]

    def training_for(self, combo: Combo) -> TrainingConfig:
        """The training settings of one combination: the suite's, with each chosen variant's overrides."""
        if not combo:
            return self.training
        return self.training_with([self.variants[axis][name] for axis, name in combo])

    def training_with(self, overrides: list[dict[str, Any]]) -> TrainingConfig:
        doc = self.training.model_dump(mode="json")
        for one in overrides:
            for key, value in (one or {}).items():
                section, _, field = key.partition(".")
                if section != "backbone":
                    (doc["augment"] if section == "augment" else doc)[field] = value
        return TrainingConfig.model_validate(doc)

    def backbones_for(self, combo: Combo) -> list[BackboneConfig]:
        """The suite's backbones with one combination's `backbone.*` overrides (the same ones when it has none)."""
        return self.backbones_with([self.variants[axis][name] for axis, name in combo])

    def backbones_with(self, overrides: list[dict[str, Any]]) -> list[BackboneConfig]:
        update = {
            key.partition(".")[2]: value
            for one in overrides
            for key, value in (one or {}).items()
            if key.startswith("backbone.")
        }
        if not update:
            return self.backbones
        return [BackboneConfig.model_validate({**b.model_dump(mode="json"), **update}) for b in self.backbones]

    def every_backbone(self) -> list[BackboneConfig]:
        """Every distinct backbone configuration the cells train (the variants' included), for the checks that run
        before anything trains."""
        from itertools import product

        seen: dict[str, BackboneConfig] = {}
        axes = [
            a for a, vs in self.variants.items() if any(k.startswith("backbone.") for o in vs.values() for k in o or {})
        ]
        for names in product(*(list(self.variants[a]) for a in axes)):  # only the axes that change a backbone
            for b in self.backbones_for(tuple(zip(axes, names))):
                seen.setdefault(b.model_dump_json(), b)
        return list(seen.values())

    @field_validator("name")
    @classmethod
    def _one_path_component(cls, v: str) -> str:
        # The name becomes runs/<name>: anything that is not one plain folder name would write elsewhere.
        printable("name", v)
        if v in (".", "..") or any(c in v for c in "/\\") or v != v.strip() or "\x00" in v:
            raise ValueError(
                f"the suite name becomes the folder runs/<name>, so it must be one plain folder name "
                f"(no '/', '\\', '.' or '..'); got {v!r}"
            )
        return v

    @field_validator("backbones", mode="before")
    @classmethod
    def _backbones(cls, v: Any) -> list[Any]:
        return [{"name": b} if isinstance(b, str) else b for b in (v or [])]

    @field_validator("formulations", mode="before")
    @classmethod
    def _formulations(cls, v: Any) -> list[Any]:
        return [parse_formulation_entry(f) for f in (v or [])]

    @model_validator(mode="after")
    def _non_empty(self, info: ValidationInfo) -> Suite:
        if not self.backbones:
            raise ValueError("backbones: the suite lists no backbone")
        if not self.formulations:
            raise ValueError("formulations: the suite lists no formulation")
        names = [b.name for b in self.backbones]
        twice = sorted({x for x in names if names.count(x) > 1})
        if twice:
            raise ValueError(f"backbones: {twice} listed twice; each backbone is one row of every table, list it once")
        sets = [t.name for t in self.test_sets]
        if len(set(sets)) != len(sets):
            raise ValueError(f"test_sets: names {sorted({x for x in sets if sets.count(x) > 1})} given twice")
        labels = [f.display for f in self.formulations]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"formulations: {sorted(dup)} listed twice; give one a distinct 'label'")
        self._augment_into_training()
        self._check_combos(stored=bool(info.context and info.context.get("stored")))
        self._check_mixing()
        return self

    def _check_mixing(self) -> None:
        """Batch mixing trains on λ·L(y) + (1 − λ)·L(y′): only a formulation whose loss is a mean of per-image
        losses linear in the target learns the mixed soft target that way."""
        from formulations import formulation_class

        # Two axes never set one field, so a combination mixes exactly when the suite or one of its variants does:
        # checking each variant alone covers every combination without building them (10⁶ for 6 axes × 10).
        singles: list[Combo] = [()] + [((axis, name),) for axis, variants in self.variants.items() for name in variants]
        for combo in singles:
            mix = self.training_for(combo).augment.mix
            if mix == "none":
                continue
            for f in self.formulations:
                reason = formulation_class(f.name).mixing_refused
                if reason:
                    where = f"variant {combo_text(combo)} sets augment.mix: {mix}" if any(
                        "augment.mix" in (self.variants[a][v] or {}) for a, v in combo
                    ) else f"augment.mix: {mix}"  # fmt: skip
                    raise ValueError(
                        f"{where}, but formulation {f.display!r} cannot train on mixed batches: {reason}. Drop the "
                        "formulation from this suite, or leave augment.mix at none (a variant mixes every formulation)"
                    )

    def _augment_into_training(self) -> None:
        """The top-level `augment:` is written where the cells read it, training.augment (a suite stored by a run
        holds both, equal)."""
        default = AugmentConfig()
        top, inner = self.augment, self.training.augment
        if top != default and inner != default and top != inner:
            raise ValueError(
                "training.augment and augment: both set, differently; write the augmentation once, at the top level"
            )
        if top != default:
            self.training = self.training.model_copy(update={"augment": top})
        else:
            self.augment = inner

    def _check_combos(self, stored: bool = False) -> None:
        """Every combination must be a valid suite, and two axes must not set the same field (which would make
        the result depend on the axes' order)."""
        fields: dict[str, list[str]] = {}
        for axis, variants in self.variants.items():
            for overrides in variants.values():
                for key in overrides or {}:
                    if axis not in fields.setdefault(key, []):
                        fields[key].append(axis)
        for key, axes in fields.items():
            if len(axes) > 1:
                raise ValueError(
                    f"variants: axes {' and '.join(repr(a) for a in axes)} both set {key}; one setting belongs to one "
                    "axis, or the result would depend on which axis is applied last"
                )
        for axis, variants in self.variants.items():
            settings: dict[str, str] = {}  # what a variant trains with -> the first variant that does
            for name, overrides in variants.items():
                try:
                    training = self.training_with([overrides])
                    backbones = self.backbones_with([overrides])
                except ValidationError as exc:
                    # the most specific error (a union type reports one per member; the deepest names the part)
                    err = max(exc.errors(), key=lambda e: len(e["loc"]))
                    loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or "function-" in p))]
                    where = ".".join(str(p) for p in loc) or "training"
                    msg = str(err["msg"]).removeprefix("Value error, ")
                    if any(k.startswith("backbone.") for k in overrides or {}) and exc.title == "BackboneConfig":
                        where = f"backbone.{where}"
                    elif not where.startswith("augment"):
                        where = f"training.{where}"
                    raise ValueError(
                        f"axis {axis!r}, variant {name!r}: {where}: {msg} (got {err.get('input')!r})"
                    ) from None
                same = json.dumps([training.model_dump(mode="json"), [b.model_dump(mode="json") for b in backbones]])
                if same in settings and not stored:  # a run stored before this check is read as it ran
                    raise ValueError(
                        f"axis {axis!r}: variants {settings[same]!r} and {name!r} train with the same settings (an "
                        "override equal to the suite's own value changes nothing), so they would share their cells "
                        "and be compared with each other as two rows; drop one, or make them differ"
                    )
                settings[same] = name


def printable(what: str, v: str) -> str:
    """Names and labels end up in table cells, headings, file names and CSV files: no control characters (a newline
    or tab would break a Markdown table or a baseline line)."""
    import unicodedata

    bad = [c for c in v if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
    if bad:
        raise ValueError(
            f"{what} {v!r} contains control characters ({', '.join(repr(c) for c in sorted(set(bad)))}); names and "
            "labels are printed in tables and files, so use printable text on one line"
        )
    return v


def parse_formulation_entry(entry: Any) -> Any:
    """'mtl+f1' is shorthand for {name: mtl, finetune: inverse_f1}; 'mtl+ft' for {name: mtl, finetune: plain};
    'mtl+drw' for {name: mtl, finetune: drw}."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        for kind, suffix in FINETUNE_SUFFIX.items():
            if entry["name"].endswith(suffix):
                entry = dict(entry, name=entry["name"][: -len(suffix)], finetune=kind)
    return entry


def stable_hash(obj: Any, n: int = 12) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]
