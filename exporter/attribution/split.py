"""The energy split, and the book that turns per-sample parts into bounded counter series.

Per sample and component, with E the energy the ledger counted for it:

  CPU and DRAM:  idle   = min(E, P_idle x dt)                 (P_idle configured or learned)
                 active = E - idle
                 E_w    = active x cpu_w / max(cpu_node, sum_w cpu_w)
                 other  = active - sum_w E_w                  (CPU time outside any workload)
  GPU (per device): E_w = E x share_w (NVML, see gpu.py); unmapped processes -> other,
                 no process -> idle
  other (a platform meter's remainder: fans, disks, NICs, power-supply losses):
                 idle   = min(E, P_idle x dt)                 (P_idle learned)
                 other  = E - idle
  anything else: other = E

so idle + other + sum_w E_w = E exactly, every sample (a test checks it).
"""

from __future__ import annotations

import collections
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from itertools import compress, repeat
from operator import add, mul

# (kind, namespace, pod, container, unit, workload_job): the workload metrics' labels after
# component, in the order of exporter.metrics.WORKLOAD_LABELS.
Key = tuple[str, str, str, str, str, str]
IDLE: Key = ("idle", "", "", "", "", "")
OTHER: Key = ("other", "", "", "", "", "")
SPECIAL = (IDLE, OTHER)
SPECIAL_SET = frozenset(SPECIAL)


class IdleFloor:
    """The power a component draws with nothing running: configured, or learned as the lowest
    per-sample power over the last hour (60 one-minute buckets)."""

    BUCKET_SECONDS = 60.0
    BUCKETS = 60

    def __init__(self, watts: float | None = None) -> None:
        self.configured = watts
        self.buckets: collections.deque[tuple[int, float]] = collections.deque()
        # the lowest of the buckets, kept as they change: taken again over all of them only
        # when the oldest bucket leaves (once a minute), not at every sample
        self._lowest: float | None = None

    @property
    def learned(self) -> float | None:
        return self._lowest

    def watts(self, observed_watts: float, now: float) -> float:
        if self.configured is not None:
            return self.configured
        buckets = self.buckets
        bucket = int(now // self.BUCKET_SECONDS)
        if buckets and buckets[-1][0] == bucket:
            if observed_watts < buckets[-1][1]:
                buckets[-1] = (bucket, observed_watts)
        else:
            buckets.append((bucket, observed_watts))
        lowest = self._lowest
        if lowest is None or observed_watts < lowest:
            lowest = observed_watts
        if buckets[0][0] <= bucket - self.BUCKETS:
            while buckets[0][0] <= bucket - self.BUCKETS:  # never the newest: it is `bucket`
                buckets.popleft()
            lowest = min(w for _, w in buckets)
        self._lowest = lowest
        return lowest


def split_by_cpu(energy: float, idle: float, node_busy: float | None,
                 workload_cpu: dict[Key, float]) -> tuple[dict[Key, float], float]:
    """CPU/DRAM energy of one sample over idle, workloads (by CPU-time delta) and other.
    Also returns the joules per CPU second of the active part (for per-process shares)."""
    idle = min(max(idle, 0.0), energy)
    active = energy - idle
    parts: dict[Key, float] = {IDLE: idle}
    used = sum(workload_cpu.values())
    denominator = max(node_busy or 0.0, used)
    per_cpu_second = active / denominator if denominator > 0 and active > 0 else 0.0
    if per_cpu_second > 0:
        parts.update({key: per_cpu_second * seconds
                      for key, seconds in workload_cpu.items() if seconds > 0})
    parts[OTHER] = energy - sum(parts.values())  # the remainder: conservation by construction
    if parts[OTHER] < 0:  # rounding only; fold it into the largest part
        largest = max((k for k in parts if k != OTHER), key=parts.__getitem__)
        parts[largest] += parts[OTHER]
        parts[OTHER] = 0.0
    return parts, per_cpu_second


def split_by_shares(energy: float, shares: list[tuple[Key | None, float]]) -> dict[Key, float]:
    """GPU energy by weights summing to 1; key None = idle share; no shares = all idle."""
    if not shares:
        return {IDLE: energy}
    parts: dict[Key, float] = {}
    for key, weight in shares:
        key = IDLE if key is None else key
        parts[key] = parts.get(key, 0.0) + energy * weight
    rest = energy - sum(parts.values())
    parts[OTHER] = parts.get(OTHER, 0.0) + rest
    return parts


@dataclass(slots=True)
class Total:
    joules: float = 0.0
    grams: float = 0.0


class Book:
    """Accumulates parts into counters with bounded cardinality.

    Each sample, live workloads are ranked by recent energy (a decaying sum); the top
    `max_workloads` get their own series, the rest is added to kind="other". With per-process
    series on, the top `max_processes` processes are carved out of their workload's part.
    A series that has not been credited for `grace` seconds (its workload ended, or it fell
    out of the top N) is dropped, sooner if more than max_workloads + max_processes series
    would be exported; Prometheus keeps what it already scraped.

    Per sample the work is a few passes over the workloads that had energy, each a dict
    operation or two per workload and component (the ranking only sorts when a holder of a
    series may have to give it up).
    """

    DECAY = 0.9
    INCUMBENCY = 1.25

    def __init__(self, max_workloads: int, max_processes: int, grace: float) -> None:
        self.max_workloads = max_workloads
        self.max_processes = max_processes
        self.grace = grace
        self.by_component: dict[str, dict[Key, Total]] = {}  # component -> key -> counters
        self.credited: dict[Key, float] = {}
        self.scores: dict[Key, float] = {}
        self.admitted: set[Key] = set()

    @property
    def totals(self) -> dict[tuple[str, Key], Total]:
        """(component, key) -> its counters (a copy, for readers)."""
        return {(component, key): total
                for component, by_key in self.by_component.items()
                for key, total in by_key.items()}

    def _admit(self, joules_by_key: dict[Key, float], limit: int
               ) -> tuple[set[Key], dict[Key, float]]:
        """The keys that hold a series, and the updated scores. Each pass over the keys is a
        map() over builtins, with no Python step per key: at 1,000 workloads this was a
        fifth of a sample's split."""
        keys = list(joules_by_key)
        # score = old score x DECAY + this sample's joules
        decayed = map(mul, map(self.scores.get, keys, repeat(0.0)), repeat(self.DECAY))
        values = list(map(add, decayed, joules_by_key.values()))
        scores = dict(zip(keys, values))
        if len(scores) <= limit:
            return set(keys), scores
        # holders of a series keep it against a newcomer less than INCUMBENCY times bigger,
        # so near-equal workloads do not take turns (each turn is a series until the grace)
        held = self.admitted
        factor = (1.0, self.INCUMBENCY)  # indexed by "holds a series" (False 0, True 1)
        ranked = list(map(mul, values, map(factor.__getitem__, map(held.__contains__, keys))))
        # the top `limit`: the limit-th largest value (a sort of floats), then those above it
        cut = sorted(ranked, reverse=True)[limit - 1]
        top = set(compress(keys, map(cut.__le__, ranked)))
        if len(top) > limit:  # ties at the cut: heapq.nlargest's choice (a stable sort)
            by_key = dict(zip(keys, ranked))
            top = set(sorted(by_key, key=by_key.__getitem__, reverse=True)[:limit])
        return top, scores

    def record(self, parts: dict[str, dict[Key, float]], grams_per_joule: dict[str, float],
               processes: dict[str, dict[Key, tuple[Key, float]]], live: AbstractSet[Key],
               now: float) -> None:
        """Credit one sample. parts: component -> key -> joules (summing to the measured
        energy); processes: component -> process key -> (its workload's key, joules)."""
        proc_joules: dict[Key, float] = {}
        for by_proc in processes.values():
            for key, (_parent, joules) in by_proc.items():
                proc_joules[key] = proc_joules.get(key, 0.0) + joules
        admitted_procs: set[Key] = set()
        proc_scores: dict[Key, float] = {}
        if proc_joules:
            admitted_procs, proc_scores = self._admit(proc_joules, self.max_processes)
        for component, by_proc in processes.items():
            component_parts = parts[component]
            for key, (parent, joules) in by_proc.items():
                if key not in admitted_procs:
                    continue  # stays in its workload's series
                taken = min(joules, component_parts.get(parent, 0.0))
                if taken <= 0:
                    continue
                component_parts[parent] -= taken
                component_parts[key] = component_parts.get(key, 0.0) + taken

        # this sample's energy per live workload: the first component by copy, others summed
        workload_joules: dict[Key, float] = dict.fromkeys(live, 0.0)
        first = True
        for component_parts in parts.values():
            if first:
                workload_joules.update(component_parts)
                first = False
                continue
            get = workload_joules.get
            for key, joules in component_parts.items():
                workload_joules[key] = get(key, 0.0) + joules
        for key in SPECIAL:
            workload_joules.pop(key, None)
        for key in admitted_procs:
            workload_joules.pop(key, None)
        # no workload had energy (a node with none): nobody holds a series, as _admit says
        admitted, scores = (self._admit(workload_joules, self.max_workloads) if workload_joules
                            else (set(), {}))
        admitted |= admitted_procs
        self.admitted = admitted
        # only live keys keep a score: one that comes back ranks from zero
        self.scores = {**proc_scores, **scores} if proc_scores else scores

        allowed = admitted | SPECIAL_SET
        credited = self.credited
        for component, component_parts in parts.items():
            ratio = grams_per_joule.get(component, 0.0)
            totals = self.by_component.setdefault(component, {})
            total_of = totals.get
            rest = 0.0
            rest_seen = False
            for key, joules in component_parts.items():
                if key in allowed:
                    total = total_of(key)
                    if total is None:
                        total = totals[key] = Total()
                    total.joules += joules
                    total.grams += joules * ratio
                else:
                    rest += joules
                    rest_seen = True
            if rest_seen:
                total = total_of(OTHER)
                if total is None:
                    total = totals[OTHER] = Total()
                total.joules += rest
                total.grams += rest * ratio
                credited[OTHER] = now
            for key in SPECIAL:
                if key in component_parts:
                    credited[key] = now
        credited.update(dict.fromkeys(admitted, now))

        grace = self.grace
        expired: set[Key] = set()
        if credited and now - min(credited.values()) > grace:
            expired = {k for k, at in credited.items() if now - at > grace and k not in SPECIAL_SET}
        # hard bound: when holders change faster than the grace period, the longest-unused
        # series go first, so never more than max_workloads + max_processes are exported
        over = len(credited) - len(expired) - sum(k in credited for k in SPECIAL) \
            - (self.max_workloads + self.max_processes)
        if over > 0:
            spare = sorted((k for k in credited
                            if k not in admitted and k not in expired and k not in SPECIAL_SET),
                           key=credited.__getitem__)
            expired.update(spare[:over])
        if expired:
            for key in expired:
                del credited[key]
            for totals in self.by_component.values():
                for key in expired:
                    totals.pop(key, None)
