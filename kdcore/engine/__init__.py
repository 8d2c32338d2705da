"""The one training loop every task shares (loop.py), what a task gives it (task.py),
and what it trains with: the device, splits, optimizers, precision, the best epoch,
callbacks, resume."""
