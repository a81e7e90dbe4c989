"""A store's secret sketch key: where every signature of the store reads its values and circuits.

The key is made when the store first needs one (32 random bytes, written as hex to ``DB/sketch.key``, a
file only its owner can read) or given by the operator (``LINEAGE_SKETCH_KEY``, hex: one key for several
stores, or a store on a shared bucket whose readers should not hold it). Signatures carry the key's id
(a one-way digest), never the key. A store that cannot be written and holds no key gets one for this
process only: what it scans then compares with what it stores by deep verification alone.
"""

from __future__ import annotations

import contextlib
import os

from lineage_scanner.errors import StoreError
from lineage_scanner.measure.sketch import KEY_ENV, SketchKey
from lineage_scanner.store.files import Files

KEY_FILE = "sketch.key"


def store_key(store) -> SketchKey:
    """The store's key: the operator's, the store's own, or a new one written into the store."""
    given = os.environ.get(KEY_ENV)
    if given:
        try:
            return SketchKey.from_hex(given)
        except ValueError as exc:
            raise StoreError(KEY_ENV, f"not a sketch key ({exc})") from None
    files = store.data
    path = f"{files.base}/{KEY_FILE}"
    found = _read(files, path)
    if found is not None:
        return found
    key = SketchKey.fresh()
    try:
        _write_private(files, path, key.secret.hex())
    except FileExistsError:  # another process made it first: its key is the store's
        return _read(files, path) or key
    except OSError:  # a read-only store: a key for this process only
        pass
    return key


def _read(files: Files, path: str) -> SketchKey | None:
    text = None
    with contextlib.suppress(OSError):
        with files.fs.open_input_stream(path) as f:
            text = f.read(1024).decode("ascii", "replace")
    if text is None:
        return None
    try:
        return SketchKey.from_hex(text)
    except ValueError:
        raise StoreError(path, "damaged sketch key (expected hex): restore it, or remove it and re-scan") from None


def _write_private(files: Files, path: str, text: str) -> None:
    """Write the key file readable by its owner only, appearing whole (temporary name, then moved)."""
    tmp = f"{files.base}/.{KEY_FILE}.{os.getpid()}.tmp"
    if not files.remote:
        os.makedirs(files.base, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        try:
            os.link(tmp, path)  # never replaces a key another process wrote meanwhile
        finally:
            os.unlink(tmp)
        return
    files.fs.create_dir(files.base, recursive=True)
    with files.fs.open_output_stream(tmp) as f:
        f.write((text + "\n").encode())
    files.fs.move(tmp, path)
