"""The exceptions kdcore raises on bad input. Each carries a message a user can act on."""


class KDError(Exception):
    """Base class: a problem with what the user gave us (spec, file, data), not a bug."""


MAX_ERRORS = 50  # past this, one more entry says more follow: an answer of bounded size
MORE_ERRORS = ("", "more errors follow; fix these first")


def capped(errors: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most MAX_ERRORS (pointer, message) pairs, then MORE_ERRORS if some were cut."""
    return errors if len(errors) <= MAX_ERRORS else [*errors[:MAX_ERRORS], MORE_ERRORS]


class SpecError(KDError):
    """The job spec is invalid. `errors` holds (JSON pointer, message) pairs, capped."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = capped(errors)
        super().__init__("; ".join(f"{loc or '/'}: {msg}" for loc, msg in self.errors))


class CheckpointError(KDError):
    """A checkpoint cannot be loaded safely or does not fit the model."""


class DataError(KDError):
    """A dataset file or archive is missing, malformed or unsafe."""


class ChannelCountError(DataError):
    """dataset.mean/std give another number of values than the images have channels."""

    def __init__(self, given: int, channels: int):
        super().__init__(f"dataset.mean has {given} values for {channels} channels")
        self.given, self.channels = given, channels


class TeacherCheckError(KDError):
    """The teacher, scored on held-out data before training, is near chance: it would be
    distilled into noise. The message gives the figures and the likely causes."""


class Cancelled(Exception):
    """Raised inside the training loop when the caller asked it to stop."""
