"""Reports: loading a run, statistics, tables, figures and renderers. Torch-free, so they start fast."""
