"""Where a batch's Ray workers go: one per GPU on a GPU node, one per CPU on a node without, each pinned to
its node softly (a restart may land elsewhere), each taking a share of a CPU so that other Ray work on the
node (a job's driver) is never starved."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Slot:
    """One worker's place: its Ray options (resources, node) and the CPU threads its kernels take."""

    options: dict
    threads: int

    def fallback(self, ray) -> dict:
        """The options of a replacement: the same, without the GPU where the cluster has none left (the
        node that had it was lost), so that the replacement can start somewhere."""
        if self.options.get("num_gpus") and ray.cluster_resources().get("GPU", 0) < 1:
            return {k: v for k, v in self.options.items() if k not in ("num_gpus", "scheduling_strategy")}
        return self.options


def placement(ray, workers: int | None = None) -> list[Slot]:
    """Where the workers go: on every live node, one actor per GPU (holding it), or on a node without
    GPUs one per CPU; each pinned to its node softly (a restart may land elsewhere). Each takes a share of
    a CPU, not all of it, so that other Ray work on the node (a job's driver) is never starved. With
    ``workers``, that many actors, GPU ones first while the cluster has GPUs, spread over the nodes."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if workers:
        total = ray.cluster_resources()
        gpus, cpus = int(total.get("GPU", 0)), total.get("CPU", 1)
        share = {"num_cpus": min(1.0, cpus / (workers + 1)), "scheduling_strategy": "SPREAD"}
        threads = max(1, round(cpus / workers))
        return [Slot({**share, "num_gpus": 1} if i < gpus else share, threads) for i in range(workers)]
    slots = []
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        gpus, cpus = int(node["Resources"].get("GPU", 0)), node["Resources"].get("CPU", 0)
        count = gpus or int(cpus)
        if not count:
            continue
        options = {"num_cpus": min(1.0, cpus / (count + 1)),
                   "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)}
        slots += [Slot({**options, "num_gpus": 1} if gpus else options, max(1, round(cpus / count)))] * count
    return slots or [Slot({"num_cpus": 0.5}, 1)]
