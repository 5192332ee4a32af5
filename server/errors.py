"""Domain errors. Each message says what happened and what to do next; app.py turns them into ToolError."""


class AutoresearchError(Exception):
    """Base class: an expected failure whose message is written for the person or agent who caused it."""


class ConfigError(AutoresearchError):
    """The configuration file is missing, unreadable or inconsistent."""


class RepoError(AutoresearchError):
    """The git repository is in a state the loop cannot safely work in (no commits, detached HEAD, ...)."""


class LockedFileError(AutoresearchError):
    """A locked file (or the configuration) differs from the version pinned for this run tag."""


class BusyError(AutoresearchError):
    """Another experiment or operation holds the repository's lock."""


class StateError(AutoresearchError):
    """The call does not fit the loop's state (keep with nothing to decide, run while a run awaits a decision)."""


class InvalidInputError(AutoresearchError):
    """Content or arguments from the caller were rejected; nothing on disk changed."""


class StorageError(AutoresearchError):
    """Writing the history, a log or a file failed (for example a full disk); the history stays valid."""


class SandboxError(AutoresearchError):
    """The sandbox cannot be set up here (bubblewrap missing); nothing was run."""


class NightOverError(StateError):
    """A cap or stop condition of the human's configuration is reached: no further run starts tonight."""


class DuplicateError(StateError):
    """The candidate is the same code as an earlier run; its result is already known."""
