"""Statistics of every attention part of a checkpoint, through a backend from :mod:`lineage_scanner.measure.kernels`.

Tensors are split into their parts (a fused QKV tensor's row ranges, per head where the packing
interleaves heads) and measured by the backend, then merged per part. Each tensor is measured one of three
ways, each in its own module and each returning a :class:`~lineage_scanner.measure.tally.Tally`:

- :mod:`~lineage_scanner.measure.exact`: read whole. A per-tensor backend (CPU) gets one tensor at a time,
  released before the next is read, so memory stays near the largest tensor; a batched backend (Triton)
  gets a whole model's segments in one call, so one launch covers the model.
- :mod:`~lineage_scanner.measure.streamed`: a tensor larger than the reader holds, block by block of rows.
- :mod:`~lineage_scanner.measure.sampled`: with a :class:`SamplePlan`, large 2-D tensors estimated from spread
  runs (see sampling.py).

Either way each Q/K/V/O matrix also yields its value sketch at the key's positions (see sketch.py), and
every matrix read whole (or in blocks) feeds the circuit sketches (see circuits.py); the layers' norm gains
fold into the Q/K/V statistics and value sketches once every tally is in.
"""

from __future__ import annotations

from collections import defaultdict

from lineage_scanner.layouts.resolve import Layout, Part
from lineage_scanner.measure.exact import exact
from lineage_scanner.measure.kernels import MomentsBackend
from lineage_scanner.measure.records import Measurement
from lineage_scanner.measure.sampled import samplable, sampled
from lineage_scanner.measure.sampling import SamplePlan
from lineage_scanner.measure.sketch import SketchKey
from lineage_scanner.measure.streamed import streamable, streamed
from lineage_scanner.measure.tally import Sketching, Subject, Tally
from lineage_scanner.readers.base import Reader


def measure(reader: Reader, layout: Layout, backend: MomentsBackend, sample: SamplePlan | None = None,
            key: SketchKey | None = None) -> Measurement:
    """Every attention part's moments, and the sketches the lineage tests read (at ``key``'s positions:
    a store's secret, else this process's own)."""
    infos = reader.tensors()
    by_tensor: dict[str, list[Part]] = defaultdict(list)
    for part in layout.parts:
        by_tensor[part.tensor].append(part)
    sketching = Sketching(key or SketchKey.of_process(), layout)
    subject = Subject(reader, layout, backend, by_tensor, sketching)
    # norms first: a layer's gain is folded into the circuits of its matrices as they pass
    names = sorted(by_tensor, key=lambda n: not any(p.role == "attn_norm" for p in by_tensor[n]))
    chosen = {n for n in names if sample and samplable(infos[n], by_tensor[n], layout)}
    in_blocks = [n for n in names if n not in chosen and streamable(reader, infos[n], by_tensor[n], layout)]
    whole = [n for n in names if n not in chosen and n not in in_blocks]
    sketching.partial = bool(chosen or in_blocks)
    reader.prefetch(whole)
    tally = Tally()
    for batch in [whole] if backend.batched else [[name] for name in whole]:
        tally += exact(subject, batch)
    for name in in_blocks:
        tally += streamed(subject, name)
    if chosen:
        tally += sampled(subject, [n for n in names if n in chosen], sample, tally.stats)
    stats = tally.folded_stats()
    dtypes: dict[str, int] = defaultdict(int)
    for name in names:
        dtypes[infos[name].dtype] += infos[name].nbytes
    dtype = max(dtypes, key=dtypes.get) if dtypes else "unknown"
    sketch = sorted([*tally.folded_sketch(), *sketching.parts()], key=lambda p: (p.layer, p.role, p.kind))
    return Measurement(tuple(sorted(stats, key=lambda s: (s.layer, s.role))), dtype, any(s.std_se for s in stats),
                       tuple(sketch), sketching.attention_digest())
