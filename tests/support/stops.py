"""Interrupting a run at a chosen step (resume tests)."""

from kdcore.engine.callbacks import Callbacks


class StopBeforeStep(Callbacks):
    """should_stop is asked once before every step: answer True before step `n` runs.
    A teacher's pass before the loop (stage `generating`: an embedding job's teacher
    store) asks once after each progress message; those asks are not steps."""

    def __init__(self, n):
        self.n, self.asked, self.generating = n, 0, False

    def on_step(self, progress):
        self.generating = progress.stage == "generating"

    def should_stop(self):
        if self.generating:
            self.generating = False
            return False
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
