"""Domain exceptions. Each carries the cause and what the user can do about it."""


class MPOError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(MPOError):
    """The run configuration is invalid; the message names the field and the fix."""


class JudgeError(MPOError):
    """A judge endpoint is misconfigured (bad key, unknown model, malformed request): retrying cannot help.
    Transient failures (timeouts, 429, 5xx, garbage replies) are not raised; they become failed judgments."""


class RubricRejected(MPOError):
    """A rewritten rubric failed validation; the previous rubric stays in force."""


class ServerError(MPOError):
    """The local model server could not be started or did not become healthy."""


class CheckpointError(MPOError):
    """A run directory or policy checkpoint is missing or inconsistent."""


class JudgeOutage(MPOError):
    """Too many judgments of one batch failed (`scoring.max_failure_rate`): training on what is left would
    train on noise. The run stops before the batch is committed; `mpo resume` judges it again (judgments that
    succeeded come from the cache, so only the failed ones are sent)."""


class RunFileError(CheckpointError):
    """A run file that should exist is missing, or cannot be read (damaged, edited by hand); the message names
    the file, the line where there is one, and what the user can do."""


class StorageError(MPOError):
    """A write into the run directory failed at the operating system (no space, no permission, a read-only
    or failing disk). The run stops at once; what was complete before stays complete, and `mpo resume`
    continues once the cause is fixed."""

    def __init__(self, path: object, reason: str, fix: str) -> None:
        self.path = path
        self.reason = reason
        self.fix = fix
        super().__init__(f"cannot write {path}: {reason}")
