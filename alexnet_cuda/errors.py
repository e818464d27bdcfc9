"""The package's error classes, one base and one exit status per kind.

Every user-facing failure is an `AlexNetError`: the command line prints its
message as one `error:` line (no traceback) and exits with its `exit_code`.

    AlexNetError            base; exit 2 (a usage problem the user can fix)
      DataError             the user's images or prepared folder
      TrainError            options and the state of a run folder
      CheckpointError       a checkpoint file that cannot be read
      BackendError          a backend that cannot run on this machine
      UnknownBackendError   a backend name that does not exist
      DivergedError         training stopped on a non-finite loss; exit 1
      TrainingInterrupted   Ctrl-C: the checkpoint is saved, --resume continues; exit 130

Programming errors in calls to the ops (a wrong dtype or shape) stay
`TypeError`/`ValueError`; CUDA failures are `RuntimeError` with the library's
message.
"""
from __future__ import annotations

__all__ = ["AlexNetError", "DataError", "TrainError", "CheckpointError", "BackendError", "UnknownBackendError",
           "DivergedError", "TrainingInterrupted",
           "EXIT_OK", "EXIT_DIVERGED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class AlexNetError(Exception):
    """A problem the user can fix; its message is one line meant for them."""

    exit_code = EXIT_USAGE


class DataError(AlexNetError):
    """A problem with the user's data (missing folder, empty class, stale prepared folder, ...)."""


class TrainError(AlexNetError):
    """A bad training option, or a run folder that does not hold what the command needs."""


class CheckpointError(AlexNetError, ValueError):
    """A checkpoint file that cannot be read or does not hold what is expected."""


class BackendError(AlexNetError, RuntimeError):
    """A backend that cannot run here (no GPU, no cupy, an extension that did not build)."""


class UnknownBackendError(AlexNetError, ValueError):
    """A backend name other than 'cuda', 'emu' and 'numpy' (an option or ALEXNET_CUDA_BACKEND)."""


class DivergedError(AlexNetError):
    """Training stopped because the loss became NaN or infinite."""

    exit_code = EXIT_DIVERGED


class TrainingInterrupted(AlexNetError):
    """Training stopped on Ctrl-C after saving a checkpoint; `--resume` continues it."""

    exit_code = EXIT_INTERRUPTED
