"""Interrupting a run at a chosen step (resume tests)."""

from kdcore.callbacks import Callbacks


class StopBeforeStep(Callbacks):
    """should_stop is asked once before every step: answer True before step `n` runs."""

    def __init__(self, n):
        self.n, self.asked = n, 0

    def should_stop(self):
        self.asked += 1
        return self.asked > self.n
