"""Interrupting a run at a chosen step (resume tests)."""

from kdcore.engine.callbacks import Callbacks


class StopBeforeStep(Callbacks):
    """should_stop is asked once before every step: answer True before step `n` runs."""

    def __init__(self, n):
        self.n, self.asked = n, 0

    def should_stop(self):
        self.asked += 1
        return self.asked > self.n


class StopBeforeTrainingStep(StopBeforeStep):
    """StopBeforeStep counting training steps only: a teacher's pass before the loop
    (stage `generating`, e.g. an embedding job's teacher store) asks once after each of
    its progress messages, and those asks are not steps."""

    def __init__(self, n):
        super().__init__(n)
        self.generating = False

    def on_step(self, progress):
        self.generating = progress.stage == "generating"

    def should_stop(self):
        if self.generating:
            self.generating = False
            return False
        return super().should_stop()


class CountSteps(Callbacks):
    """Counts the steps and epochs a run reports (a run refused before training: 0)."""

    def __init__(self):
        self.steps = 0

    def on_step(self, progress):
        self.steps += 1

    def on_epoch_end(self, progress):
        self.steps += 1
