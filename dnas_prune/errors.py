"""The one exception family users see: each message is a single line that says what to do.

The CLI prints these as ``dnas-prune: error: <message>`` and exits non-zero, without a traceback.
"""


class DnasPruneError(ValueError):
    """Base of every user-facing error (bad input, bad file, infeasible request)."""


class DataError(DnasPruneError):
    """Data directory missing or of the wrong layout."""


class CheckpointError(DnasPruneError):
    """A checkpoint or pruned-model file that is missing, truncated, foreign or unsafe."""


class BudgetError(DnasPruneError):
    """A cost target outside (0, 1] or below what cannot be pruned."""


class GatingError(DnasPruneError):
    """A model layout the supernet cannot gate exactly."""


class TrainingDiverged(DnasPruneError):
    """A NaN/inf loss; the message names the last good checkpoint."""
