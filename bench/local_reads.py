"""What reading local checkpoints through positioned reads costs against the memory map it replaced, and what
the revision's digest of every byte costs.

    python bench/local_reads.py [--data bench/data] [--reps 5]

On the four 1.14 GB models of ``bench/batch.py`` (336 MB of bf16 attention each), page cache warm, in this
process, the best of ``--reps`` runs:

1. the attention tensors' moments (CPU backend, with the Q/K/V column sums) from numpy views of a private
   memory map, pages dropped after each tensor (the reader before issue 22: a file truncated meanwhile was
   SIGBUS) -- the baseline;
2. the same from :class:`lineage_scanner.readers.local.SafetensorsFile` (``pread`` into a fresh buffer,
   the file's identity checked after each read);
3. the revision's digest of every byte of the four files (:meth:`LocalFile.digest`: SHA-256 of 16 MiB
   chunks on every core), what a first open of a checkpoint costs on top.
"""

from __future__ import annotations

import argparse
import mmap
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch import ATTENTION, generate  # noqa: E402
from timing import best_seconds  # noqa: E402

from lineage_scanner.measure.kernels import get_backend  # noqa: E402
from lineage_scanner.readers.arrays import numeric_dtype  # noqa: E402
from lineage_scanner.readers.local import LocalFile, SafetensorsFile  # noqa: E402


def attention(reader: SafetensorsFile) -> list[str]:
    return [name for name in reader.tensors() if name.endswith(ATTENTION)]


def through_map(paths: list[Path], backend) -> None:
    """The replaced reader: numpy views of a private map, MADV_WILLNEED before and MADV_DONTNEED after."""
    for path in paths:
        reader = SafetensorsFile(path)
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        for name in attention(reader):
            info = reader.tensors()[name]
            start = info.start - info.start % mmap.PAGESIZE
            mapped.madvise(mmap.MADV_WILLNEED, start, info.end - start)
            view = np.frombuffer(mapped, numeric_dtype(info, str(path)), info.numel, info.start).reshape(info.shape)
            backend.partials_with_columns([view], 1)
            del view
            mapped.madvise(mmap.MADV_DONTNEED, start, info.end - start)
        mapped.close()
        reader.close()


def through_reads(paths: list[Path], backend) -> None:
    for path in paths:
        reader = SafetensorsFile(path)
        for name in attention(reader):
            backend.partials_with_columns([reader.read(name)], 1)
        reader.close()


def digests(paths: list[Path]) -> None:
    for path in paths:
        file = LocalFile(path)
        file.digest()
        file.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    four, _ = generate(args.data)
    paths = [p / "model.safetensors" for p in four]
    total = sum(p.stat().st_size for p in paths)
    probe = SafetensorsFile(paths[0])
    read = len(paths) * sum(probe.tensors()[n].nbytes for n in attention(probe))
    probe.close()
    backend = get_backend("cpu")
    through_map(paths[:1], backend)  # compile the kernels, warm the page cache
    digests(paths)
    rows = {
        "memory map + moments (before)": (best_seconds(lambda: through_map(paths, backend), args.reps), read),
        "pread + moments (now)": (best_seconds(lambda: through_reads(paths, backend), args.reps), read),
        "digest of every byte (first open)": (best_seconds(lambda: digests(paths), args.reps), total),
    }
    base = rows["memory map + moments (before)"][0]
    print(f"\n4 models, {read / 1e9:.2f} GB of attention in {total / 1e9:.2f} GB of files, page cache warm, "
          f"best of {args.reps}")
    print("| path | seconds | GB/s | against the map |\n| --- | ---: | ---: | ---: |")
    for name, (seconds, nbytes) in rows.items():
        print(f"| {name} | {seconds:.3f} | {nbytes / seconds / 1e9:.2f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
