"""The label space every layer shares: the Mayo endoscopic score, grades 0..3."""

NUM_CLASSES = 4
GRADES = tuple(range(NUM_CLASSES))
CLASS_NAMES = tuple(f"MES {k}" for k in GRADES)
PROBA_COLUMNS = tuple(f"p{k}" for k in GRADES)  # per-image class probabilities in the results store
