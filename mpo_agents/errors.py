"""Domain exceptions. Each carries the cause and what the user can do about it."""


class MPOError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(MPOError):
    """The run configuration is invalid; the message names the field and the fix."""


class JudgeError(MPOError):
    """A judge call failed for good (after retries); the caller records it as a failed judgment."""


class RubricRejected(MPOError):
    """A rewritten rubric failed validation; the previous rubric stays in force."""


class ServerError(MPOError):
    """The local model server could not be started or did not become healthy."""


class CheckpointError(MPOError):
    """A run directory or policy checkpoint is missing or inconsistent."""
