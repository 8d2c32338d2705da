"""Interrupting a run at a chosen step (resume tests)."""

from kdcore.engine.callbacks import Callbacks


class StopBeforeStep(Callbacks):
    """should_stop is asked once before every step: answer True before step `n` runs."""

    def __init__(self, n):
        self.n, self.asked = n, 0

    def should_stop(self):
        self.asked += 1
        return self.asked > self.n


class CountSteps(Callbacks):
    """Counts the steps and epochs a run reports (a run refused before training: 0)."""

    def __init__(self):
        self.steps = 0

    def on_step(self, progress):
        self.steps += 1

    def on_epoch_end(self, progress):
        self.steps += 1
