"""lineage-scanner: tell which open-weight models were derived from which, from their weights alone."""

import os

__version__ = "0.1.0"

# The compiled kernels run on numba's OpenMP threads, whose GNU runtime spins while it waits for work. On
# a machine whose cores other processes also use (Ray workers, a neighbour's job), a spinning thread
# takes the time slice the working one needs: beside two busy processes, four 1.14 GB models took 1.73 s
# in-process spinning, 1.25 s sleeping (bench/RESULTS.md). Sleeping costs microseconds per kernel (small
# tensors skip the threads altogether). Read when OpenMP starts, so set here, before any kernel runs; an
# explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The same holds for OpenBLAS's threads (the circuit sketches' products): they spin between calls, and beside
# busy processes a 512-wide model's products took 18x longer on two threads than on one (measured on the
# development machine under load). The scan's parallelism is numba's; BLAS runs on the calling thread.
# Read when numpy loads OpenBLAS: effective where this package is imported first (the `lineage` command).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
