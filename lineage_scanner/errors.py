"""Typed errors. Every failure a user can cause names the file and the problem in one line.

The CLI prints ``Error: <str(exc)>`` and exits 1; a batch scan records ``str(exc)`` in the error row and
goes on with the next model. ``status`` is what the error row's ``status`` column says, and ``reason`` (where
a class has one) its ``reason`` column: which kind of that failure, so that tests and users tell kinds apart
without matching text. Every error class of the package is here.
"""

from __future__ import annotations


class LineageError(Exception):
    """Base of every error the tool reports as one line (``Error: ...``, exit code 1)."""


class UsageError(LineageError):
    """A command was given something it cannot use (not a scan error): refused SQL, nothing to scan."""


class QueryLimitError(LineageError):
    """A user's SQL query stopped by its time or memory limit (``lineage sql --timeout/--memory-limit``)."""


class StoreError(LineageError):
    """The store cannot be written (not a directory, no permission, a full disk): the batch stops here,
    with every model it finished already written."""

    def __init__(self, path: object, problem: str):
        super().__init__(f"{path}: {problem}")


class BackendUnavailable(LineageError):
    """The moments backend asked for cannot run here (no GPU, or Triton not installed)."""


class ScanError(LineageError):
    """Base class: a model could not be scanned. ``path`` is the file (or source) at fault."""

    status = "error"
    #: the kind of failure within its status, where the class names one (the error row's ``reason``)
    reason: str | None = None

    def __init__(self, path: object, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class HeaderError(ScanError):
    """A checkpoint header is malformed or lies about its data (safetensors or GGUF). The safetensors
    header's failures each have a kind of their own below, named as the safetensors library names them
    (``SafeTensorError`` in its ``tensor.rs``)."""

    status = "bad_header"


class HeaderTooSmall(HeaderError):
    """The file is shorter than the 8-byte length prefix."""

    reason = "header_too_small"


class HeaderTooLarge(HeaderError):
    """The length prefix announces a header over the cap."""

    reason = "header_too_large"


class InvalidHeaderLength(HeaderError):
    """The length prefix announces a header that runs past the end of the file."""

    reason = "invalid_header_length"


class InvalidHeader(HeaderError):
    """The header's bytes are not UTF-8."""

    reason = "invalid_header"


class InvalidHeaderDeserialization(HeaderError):
    """The header is not the JSON a safetensors header is: not JSON, not an object, or an entry whose
    metadata, dtype or shape has the wrong form."""

    reason = "invalid_header_deserialization"


class InvalidOffset(HeaderError):
    """A tensor's ``data_offsets`` are not [begin, end], or leave a gap or overlap the previous tensor."""

    reason = "invalid_offset"


class TensorInvalidInfo(HeaderError):
    """A tensor's dtype and shape need another number of bytes than its offsets span."""

    reason = "tensor_invalid_info"


class ValidationOverflow(HeaderError):
    """A shape or offset too large to be real (past 2^62)."""

    reason = "validation_overflow"


class MetadataIncompleteBuffer(HeaderError):
    """The tensors do not end where the file does: it is truncated, or has trailing bytes."""

    reason = "metadata_incomplete_buffer"


class UnsafeFormatError(ScanError):
    """Pickle-based weights (.bin/.pt/.pth): refused, since unpickling runs arbitrary code."""

    status = "unsafe_format"


class ConfigError(ScanError):
    """config.json missing or malformed, or lacking a field the layout needs."""

    status = "bad_config"


class SourceError(ScanError):
    """The source names nothing scannable (missing path, empty directory, unknown store id)."""

    status = "not_found"


class ChangedError(ScanError):
    """A local file changed while it was scanned (written, truncated or replaced): what was measured is not
    what its revision names. Scanning it again once it is still gives a signature."""

    status = "changed"


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


class WorkerDied(ScanError):
    """The process scanning this model was lost (a crash, the OOM killer, preemption) on every attempt."""

    status = "worker_died"

    def __init__(self, source: str, attempts: int, exc: Exception):
        super().__init__(source, f"the scanning worker died {attempts} times on this model "
                                 f"({exc.__class__.__name__})")


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
