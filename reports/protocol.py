"""What the protocol makes of a number: where it is partly in-sample (‡), fitted decoding cross-fitted, options
tuned — the notes every table carries."""

from __future__ import annotations

from .load import Run

IN_SAMPLE_MARK = " ‡"


def in_sample(run: Run, split: str) -> set[str]:
    """Formulations whose numbers on this split are partly in-sample: a fine-tuning stage whose class weights
    come from the stage-1 model's F1 on the validation fold is then scored on that same fold."""
    if split != "val":
        return set()
    return {f.display for f in run.suite.formulations if f.finetune == "inverse_f1"}


def mark_in_sample(run: Run, split: str, name: str) -> str:
    """A formulation's name, with ‡ where its numbers on this split are partly in-sample."""
    return name + IN_SAMPLE_MARK if name in in_sample(run, split) else name


def protocol_notes(run: Run, split: str = "val") -> list[str]:
    """In-sample status and provenance: cross-fitted decoding, in-sample fine-tuning weights, tuned formulations."""
    notes = []
    fitted = [f.display for f in run.suite.formulations if run.fits_decoding(f.display)]
    leaky = sorted(in_sample(run, split))
    if fitted:
        notes.append(
            f"Fitted decoding ({', '.join(fitted)}): validation metrics are "
            "cross-fitted (parameters fitted on one half of the fold's validation images, scored on the "
            "other, and swapped; halves stratified and patient-grouped where the protocol groups); the test "
            "set is decoded with the parameters fitted on the whole validation fold."
        )
    if leaky:
        notes.append(
            f"‡ IN-SAMPLE: the validation numbers of {', '.join(leaky)} are partly in-sample — the inverse-F1 class "
            "weights of its fine-tuning stage come from the stage-1 model's F1 on the same validation fold they "
            "are then scored on. Compare them on the held-out test set (--split test, Table 5), where they are not."
        )
    else:
        notes.append(
            "No number is in-sample" + (" (the fitted decoding is cross-fitted, as above)." if fitted else ".")
        )
    for f in run.suite.formulations:
        if f.tuned:
            notes.append(f"{f.display}: options tuned — {f.tuned}")
    return notes
