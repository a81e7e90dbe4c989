"""Typed errors. Every failure a user can cause names the file and the problem in one line.

The CLI prints ``Error: <str(exc)>`` and exits 1; a batch scan records ``str(exc)`` in the error row and
goes on with the next model. ``status`` is what the error row's ``status`` column says.
"""

from __future__ import annotations


class LineageError(Exception):
    """Base of every error the tool reports as one line (``Error: ...``, exit code 1)."""


class UsageError(LineageError):
    """A command was given something it cannot use (not a scan error): refused SQL, nothing to scan."""


class StoreError(LineageError):
    """The store cannot be written (not a directory, no permission, a full disk): the batch stops here,
    with every model it finished already written."""

    def __init__(self, path: object, problem: str):
        super().__init__(f"{path}: {problem}")


class ScanError(LineageError):
    """Base class: a model could not be scanned. ``path`` is the file (or source) at fault."""

    status = "error"

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class HeaderError(ScanError):
    """A checkpoint header is malformed or lies about its data (safetensors or GGUF)."""

    status = "bad_header"


class UnsafeFormatError(ScanError):
    """Pickle-based weights (.bin/.pt/.pth): refused, since unpickling runs arbitrary code."""

    status = "unsafe_format"


class ConfigError(ScanError):
    """config.json missing or malformed, or lacking a field the layout needs."""

    status = "bad_config"


class SourceError(ScanError):
    """The source names nothing scannable (missing path, empty directory, unknown store id)."""

    status = "not_found"


class UnsupportedError(ScanError):
    """The checkpoint is readable but holds no attention tensors this scanner understands."""

    status = "unsupported"


class NonFiniteError(ScanError):
    """A tensor holds NaN or Inf values: reported, never averaged into a statistic."""

    status = "non_finite"


class GatedError(ScanError):
    """A gated or private Hub repo this token may not read."""

    status = "gated"


class RemoteError(ScanError):
    """The Hub kept failing (429, 5xx, dropped or short bodies) after every retry."""

    status = "network"


class DeferredError(ScanError):
    """The Hub's budget for this model's requests is spent for longer than a scan waits: deferred, not
    failed (the next ``scan --catalog`` takes it first)."""

    status = "deferred"


class IdentityError(ScanError):
    """A server named another repo or commit than the one asked for (or a malformed one): nothing is stored
    under the name it claimed."""

    status = "bad_identity"


class DeadlineError(ScanError):
    """A server stalled, trickled its bytes, or the model's scan ran past its deadline: a ``timeout`` row,
    which the next ``scan --catalog`` takes again (the rest of the batch goes on)."""

    status = "timeout"


class InternalError(ScanError):
    """An exception the scanner did not expect: still one error row, naming its type and where it arose."""

    status = "internal_error"

    @classmethod
    def of(cls, path: object, exc: BaseException) -> InternalError:
        import traceback

        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "lineage_scanner" in f.filename]
        where = f" (at {frames[-1].filename.rpartition('lineage_scanner')[2].lstrip('/')}:{frames[-1].lineno})" \
            if frames else ""
        message = " ".join(str(exc).split())[:300]
        return cls(path, f"internal error: {exc.__class__.__name__}: {message}{where}")
