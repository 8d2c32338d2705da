"""The training loop every task shares (loop.py) and what a task gives it (task.py)."""
