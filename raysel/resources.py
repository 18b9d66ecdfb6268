"""Can the cluster run a trial at all? Checked before any trial starts (Ray would wait forever).

A trial needs one bundle of resources per process: with ``workers: 0`` the trial's own process
(``cpus_per_worker`` CPUs, ``gpus_per_worker`` GPUs, ...); with ``workers: N`` a small driver plus N
worker bundles. The bundles must fit, all at once, on the cluster's nodes (by their total
resources) — now, or after the autoscaler adds nodes of the types it may launch. Otherwise the
sweep stops with one line naming the field and what the cluster has; when the nodes must first be
added, the sweep waits for them (``resources.scale_timeout_s``) and says so.

The judgement (``plan``) is a pure function of the bundles and the cluster's description; only
``describe_cluster`` and ``wait_for_nodes`` talk to Ray.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from raysel.spec import ResourcesSpec

DRIVER_MEMORY = 256 * 2**20  # bytes: a Ray Train trial's own process only drives its workers
GIB = 2**30
FIELDS = {"CPU": "resources.cpus_per_worker", "GPU": "resources.gpus_per_worker",
          "memory": "resources.memory_gb_per_worker"}
Bundle = dict[str, float]


class ScaleUpTimeout(TimeoutError):
    """The autoscaler did not add the nodes a trial needs within ``resources.scale_timeout_s``."""


@dataclass
class NodeType:
    """A kind of node the autoscaler may add (``max_count`` -1: no limit)."""

    name: str
    resources: Bundle
    max_count: int


@dataclass
class Cluster:
    nodes: list[Bundle]  # the alive nodes' total resources
    node_types: list[NodeType] = field(default_factory=list)
    autoscaler: bool = False  # an autoscaler may add nodes (of unknown types when node_types is empty)
    what: str = "the cluster"  # how messages name it


@dataclass
class Plan:
    fits_now: bool
    problem: str | None = None  # the one line when the trial can never run

    @property
    def needs_scaling(self) -> bool:
        return not self.fits_now and self.problem is None


def extra_per_worker(resources: ResourcesSpec) -> Bundle:
    """A worker's resources beside its CPUs and GPUs (memory in bytes, custom resources), as Ray names them."""
    extra = {"memory": resources.memory_gb_per_worker * GIB, **resources.custom_per_worker}
    return {k: v for k, v in extra.items() if v > 0}


def worker_bundle(cpus: float, gpus: float, extra: Bundle) -> Bundle:
    """What one process of a trial reserves (the trial's own with ``workers: 0``, else each worker's)."""
    return {"CPU": cpus, **({"GPU": gpus} if gpus > 0 else {}), **extra}


def trial_bundles(resources: ResourcesSpec) -> list[Bundle]:
    """What one trial reserves: its own process, and each Ray Train worker's."""
    worker = worker_bundle(resources.cpus_per_worker, resources.gpus_per_worker, extra_per_worker(resources))
    if resources.workers == 0:
        return [worker]
    return [{"memory": DRIVER_MEMORY}] + [dict(worker) for _ in range(resources.workers)]


def fits(bundles: list[Bundle], nodes: list[Bundle]) -> bool:
    """Whether every bundle finds room on some node at once (first fit, largest bundles first)."""
    free = [dict(n) for n in nodes]
    for bundle in sorted(bundles, key=lambda b: (b.get("GPU", 0), b.get("CPU", 0), b.get("memory", 0)), reverse=True):
        node = next((n for n in free if all(n.get(k, 0) >= v - 1e-9 for k, v in bundle.items())), None)
        if node is None:
            return False
        for k, v in bundle.items():
            node[k] -= v
    return True


def plan(resources: ResourcesSpec, cluster: Cluster) -> Plan:
    """Whether a trial fits the cluster now, after scaling, or never (with the line saying why)."""
    bundles = trial_bundles(resources)
    if fits(bundles, cluster.nodes):
        return Plan(fits_now=True)
    if cluster.autoscaler and not cluster.node_types:
        return Plan(fits_now=False)  # the autoscaler's node types are unknown: wait and see
    scalable = [t.resources for t in cluster.node_types for _ in range(len(bundles) if t.max_count < 0
                                                                          else min(t.max_count, len(bundles)))]
    if fits(bundles, cluster.nodes + scalable):
        return Plan(fits_now=False)
    return Plan(fits_now=False, problem=_why(resources, bundles, cluster, scalable))


def _why(resources: ResourcesSpec, bundles: list[Bundle], cluster: Cluster, scalable: list[Bundle]) -> str:
    has = f"{cluster.what} has {describe(cluster)}"
    worker = bundles[-1]
    for name, amount in worker.items():
        if not any(node.get(name, 0) >= amount - 1e-9 for node in cluster.nodes + scalable):
            where = FIELDS.get(name, f"resources.custom_per_worker.{name}")
            return (f"{where}: a {'worker' if resources.workers else 'trial'} needs {_amount(name, amount)}, but no "
                    f"node has that; {has}")
    return (f"resources.workers: {resources.workers} workers x {_describe_bundle(worker)} (and the trial's driver) "
            f"do not fit on {cluster.what} at once; {has}")


def describe(cluster: Cluster) -> str:
    nodes = "; ".join(f"node {i + 1}: {_describe_bundle(n)}" for i, n in enumerate(cluster.nodes)) or "no nodes"
    if cluster.node_types:
        types = "; ".join(f"{t.name} ({'any number' if t.max_count < 0 else f'up to {t.max_count}'}): "
                          f"{_describe_bundle(t.resources)}" for t in cluster.node_types)
        return f"{nodes}; the autoscaler may add {types}"
    return f"{nodes}; {'an autoscaler of unknown node types' if cluster.autoscaler else 'no autoscaler'}"


def _describe_bundle(bundle: Bundle) -> str:
    shown = {k: v for k, v in bundle.items() if v and not k.startswith("node:") and k != "object_store_memory"}
    return ", ".join(_amount(k, v) for k, v in sorted(shown.items(), key=lambda kv: (kv[0] != "CPU", kv[0]))) or "nothing"


def _amount(name: str, value: float) -> str:
    if name == "memory":
        return "memory as Ray sets it" if value == float("inf") else f"{value / GIB:.1f} GiB memory"
    return f"{value:g} {name}"


# ---------------------------------------------------------------- Ray
def local_machine(num_cpus: int | None) -> Cluster:
    """The Ray a sweep would start on this machine, before it starts: its CPUs and GPUs, no autoscaler
    (memory is not judged here: Ray sets it when it starts; the check after the start covers it)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    node = {"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(gpus), "memory": float("inf")}
    return Cluster(nodes=[node], what="a local Ray on this machine")


def autoscaler_runs(status: bytes | str | None) -> bool:
    """Whether the autoscaling status Ray's monitor keeps in the GCS comes from an autoscaler that may add
    nodes. Every head's monitor writes one; without an autoscaling config it runs read-only, and then each
    node's type is named after the node itself (Ray's ``format_readonly_node_type``). No report yet: none."""
    from ray.autoscaler._private.util import format_readonly_node_type

    report = (json.loads(status) if status else {}).get("autoscaler_report") or {}
    return any(kind != format_readonly_node_type(node) for node, kind in (report.get("node_type_mapping") or {}).items())


def describe_cluster() -> Cluster:
    """The connected cluster: its alive nodes and, when an autoscaler reports them, its node types."""
    import ray
    from ray._private import ray_constants
    from ray._private.state import state
    from ray.experimental.internal_kv import _internal_kv_get

    nodes = [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]
    try:
        config = state.get_cluster_config()
        autoscaling = autoscaler_runs(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS))
    except Exception:  # noqa: BLE001 - e.g. through Ray Client: the autoscaler cannot be asked, so assume one
        return Cluster(nodes=nodes, autoscaler=True)
    node_types = [NodeType(g.name, dict(g.resources), g.max_count) for g in config.node_group_configs
                  if g.max_count != 0] if config is not None else []
    return Cluster(nodes=nodes, node_types=node_types, autoscaler=bool(node_types) or autoscaling)


def wait_for_nodes(resources: ResourcesSpec, timeout_s: float, say: Callable[[str], None],
                   poll_s: float = 2.0, say_every_s: float = 30.0) -> None:
    """Ask the autoscaler for a trial's bundles and wait until they fit; ScaleUpTimeout after ``timeout_s``."""
    from ray.autoscaler.sdk import request_resources

    bundles = trial_bundles(resources)
    request_resources(bundles=bundles)
    started = last_said = time.monotonic()
    say(f"waiting for the cluster to scale up: a trial needs {len(bundles)} bundle(s) of "
        f"{_describe_bundle(bundles[-1])}; {describe(describe_cluster())} (up to resources.scale_timeout_s="
        f"{timeout_s:g} s; Ctrl+C stops the sweep)")
    try:
        while not fits(bundles, describe_cluster().nodes):
            now = time.monotonic()
            if now - started > timeout_s:
                raise ScaleUpTimeout(f"resources: the cluster did not scale up to run a trial within "
                                     f"resources.scale_timeout_s={timeout_s:g} s; {describe(describe_cluster())}")
            if now - last_said >= say_every_s:
                say(f"still waiting for the cluster to scale up ({now - started:.0f} s of {timeout_s:g} s)")
                last_said = now
            time.sleep(poll_s)
    finally:
        request_resources(bundles=[])  # the trials hold what they use; no standing request
    say(f"the cluster has room for a trial after {time.monotonic() - started:.0f} s")
