"""User-facing error types.

The CLI prints any :class:`DDMIError` as a single line (no traceback) and exits non-zero.
Raise these for problems the user can fix (bad input files, bad config, missing weights).
"""


class DDMIError(Exception):
    """Base class of errors caused by user input, shown as one line by the CLI."""


class ConfigError(DDMIError):
    """An invalid configuration key or value."""


class DataError(DDMIError):
    """An unreadable, corrupt or empty dataset or file."""


class CheckpointError(DDMIError):
    """A missing, corrupt or incompatible run folder / checkpoint."""


class MissingDependencyError(DDMIError):
    """An optional package or a local weights file that a feature needs is not available."""
