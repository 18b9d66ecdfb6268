"""Whether a trial fits the cluster (raysel.resources.plan): now, after the autoscaler adds nodes, or never."""
from __future__ import annotations

import json

import pytest

from raysel.resources import GIB, Cluster, NodeType, autoscaler_runs, fits, plan, trial_bundles
from raysel.spec import ResourcesSpec

HEAD = {"CPU": 2.0, "memory": 8.0 * GIB, "object_store_memory": 1.0 * GIB, "node:127.0.0.1": 1.0}
GPU_NODE = NodeType("gpu-worker", {"CPU": 8.0, "GPU": 1.0, "memory": 30.0 * GIB}, max_count=2)


def test_a_trial_reserves_its_process_or_a_driver_and_its_workers():
    assert trial_bundles(ResourcesSpec(cpus_per_worker=2)) == [{"CPU": 2.0}]
    bundles = trial_bundles(ResourcesSpec(workers=2, gpus_per_worker=1, memory_gb_per_worker=4,
                                          custom_per_worker={"TPU": 1}))
    assert bundles[0] == {"memory": 256 * 2**20}  # the driver
    assert bundles[1:] == [{"CPU": 1.0, "GPU": 1.0, "memory": 4.0 * GIB, "TPU": 1.0}] * 2


def test_bundles_fit_when_all_find_room_at_once():
    assert fits([{"CPU": 1}, {"CPU": 1}], [{"CPU": 1}, {"CPU": 1}])  # one per node
    assert not fits([{"CPU": 1}, {"CPU": 1}, {"CPU": 1}], [{"CPU": 2}])
    assert fits([{"CPU": 1}, {"CPU": 2}], [{"CPU": 1}, {"CPU": 2}])  # the larger bundle placed first
    assert not fits([{"GPU": 0.5}], [{"CPU": 8}])


def test_what_fits_now_runs_now():
    placement = plan(ResourcesSpec(workers=2), Cluster(nodes=[HEAD]))
    assert placement.fits_now and not placement.needs_scaling and placement.problem is None


def test_a_gpu_the_autoscaler_can_add_is_waited_for():
    placement = plan(ResourcesSpec(gpus_per_worker=1), Cluster(nodes=[HEAD], node_types=[GPU_NODE], autoscaler=True))
    assert placement.needs_scaling and placement.problem is None
    # an autoscaler whose node types are not known (e.g. an older one): wait and see
    assert plan(ResourcesSpec(gpus_per_worker=1), Cluster(nodes=[HEAD], autoscaler=True)).needs_scaling


@pytest.mark.parametrize("resources, expected", [
    (ResourcesSpec(gpus_per_worker=1), "resources.gpus_per_worker: a trial needs 1 GPU, but no node has that; "
                                       "the cluster has node 1: 2 CPU, 8.0 GiB memory; no autoscaler"),
    (ResourcesSpec(workers=3), "resources.workers: 3 workers x 1 CPU (and the trial's driver) do not fit on the "
                               "cluster at once; the cluster has node 1: 2 CPU, 8.0 GiB memory; no autoscaler"),
    (ResourcesSpec(memory_gb_per_worker=16), "resources.memory_gb_per_worker: a trial needs 16.0 GiB memory"),
    (ResourcesSpec(workers=1, custom_per_worker={"TPU": 4}), "resources.custom_per_worker.TPU: a worker needs 4 TPU"),
])
def test_what_no_node_can_ever_hold_is_one_line_naming_the_field_and_the_cluster(resources, expected):
    placement = plan(resources, Cluster(nodes=[HEAD]))
    assert not placement.fits_now and placement.problem.startswith(expected), placement.problem


def test_beyond_what_the_autoscaler_can_add_is_refused_with_its_node_types():
    placement = plan(ResourcesSpec(workers=3, gpus_per_worker=1), Cluster(nodes=[HEAD], node_types=[GPU_NODE]))
    assert placement.problem == ("resources.workers: 3 workers x 1 CPU, 1 GPU (and the trial's driver) do not fit "
                                 "on the cluster at once; the cluster has node 1: 2 CPU, 8.0 GiB memory; the "
                                 "autoscaler may add gpu-worker (up to 2): 8 CPU, 1 GPU, 30.0 GiB memory")
    unlimited = NodeType("gpu-worker", GPU_NODE.resources, max_count=-1)
    assert plan(ResourcesSpec(workers=3, gpus_per_worker=1), Cluster(nodes=[HEAD], node_types=[unlimited])).needs_scaling


NODE = "286edd060786261c1462b436900a75d7b3c713e7020589cc30a36037"


def test_only_an_autoscaling_monitor_counts_as_an_autoscaler():
    """The status Ray's monitor writes (shapes recorded from Ray 2.x): a plain `ray start --head` runs it
    read-only, naming each node's type after the node; an autoscaling head names its config's node types."""
    def status(mapping: dict[str, str]) -> str:
        return json.dumps({"time": 1.0, "autoscaler_report": {"active_nodes": {}, "node_type_mapping": mapping}})

    assert not autoscaler_runs(status({NODE: f"node_{NODE}"}))
    assert autoscaler_runs(status({NODE: "ray.head.default"}))
    assert not autoscaler_runs(None) and not autoscaler_runs(json.dumps({"time": 1.0}))  # no report (yet)
