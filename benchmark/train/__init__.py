"""The training layer: batched augmentation, device plan, the training loop, one cell start to finish."""
