"""A file the sweep's trials share is built once even when their nodes share no filesystem: the sweep's
registry actor (raysel.shared_files) decides who builds it, the others wait and fetch it from the
sweep's storage (a real S3-compatible server here). Each "node" below is a Ray task with its own local
mirror (RAYSEL_CACHE); with file locks instead of the registry both would build."""
from __future__ import annotations

import time
from pathlib import Path

from s3_helpers import S3_BUCKET

from raysel.shared_files import SharedFileRegistry


def test_the_registry_gives_an_entry_to_one_builder_and_takes_back_a_stale_or_abandoned_claim():
    registry = SharedFileRegistry(stale_after_s=3600)
    assert registry.claim("kernel-a", "t1") == ("build", "t1")
    assert registry.claim("kernel-a", "t2") == ("wait", "t1")
    assert registry.claim("kernel-a", "t1") == ("build", "t1")  # the builder asking again keeps it
    assert registry.claim("kernel-b", "t2") == ("build", "t2")  # entries are independent
    registry.abandon("kernel-a", "t2")  # not t2's claim: nothing changes
    assert registry.claim("kernel-a", "t3") == ("wait", "t1")
    registry.abandon("kernel-a", "t1")
    assert registry.claim("kernel-a", "t3") == ("build", "t3")
    registry.publish("kernel-a", "t3")
    assert registry.claim("kernel-a", "t1") == ("ready", "t3")

    registry.stale_after_s = 0.2
    registry.renew("kernel-b", "t2")
    assert registry.claim("kernel-b", "t4") == ("wait", "t2")
    time.sleep(0.3)  # t2 stopped renewing (its process died)
    assert registry.claim("kernel-b", "t4") == ("build", "t4")
    registry.renew("kernel-b", "t2")  # a late heartbeat of the old builder does not take it back
    assert registry.claim("kernel-b", "t2") == ("wait", "t4")


def _build_on_nodes(tmp_path: Path, s3: dict[str, str], behaviours: list[str], *, registry: bool = True,
                    stale_after_s: float = 60.0) -> list:
    """Two trials on two "nodes" (own mirrors, one bucket) that both need ``kernel-x/kernels.pt``.

    ``behaviours[i]`` says what trial i's build does when it is the first build to start: "ok", "raise"
    or "die" (its process exits); any later build succeeds. Per trial: (built_here, source, values,
    seconds it took) or the error it ended with."""
    import ray

    from raysel.shared_files import start_registry

    name, actor = start_registry("shared-test", stale_after_s) if registry else ("", None)
    storage_path = f"s3://{S3_BUCKET}/sweeps/shared-test"
    first = tmp_path / "first-build-started"

    def trial(index: int, behaviour: str):
        import os

        import torch

        from raysel.methods.collective import shared_file
        from raysel.run_context import LocalRun
        from raysel.shared_files import RegistryShares
        from raysel.storage import Storage

        started = time.monotonic()
        local = Storage.parse(storage_path).local
        trial_id = f"trial_{index}"
        shares = RegistryShares(name, storage_path, trial_id, heartbeat_s=0.2) if name else None
        run = LocalRun(seed=index, artifact_dir=local / "artifacts" / trial_id, shared_dir=local / "artifacts" / "shared",
                       shared_files=shares)

        def build():
            try:
                first.open("x").close()
                is_first = True
            except FileExistsError:
                is_first = False
            time.sleep(2.0)  # long enough for the other trial to ask for it meanwhile
            if is_first and behaviour == "raise":
                raise RuntimeError("the build failed")
            if is_first and behaviour == "die":
                os._exit(1)
            (run.shared_dir / "kernel-x" / "pairs.csv").write_text(f"built by {trial_id}\n")
            return {"values": torch.arange(5) * 10}

        shared = shared_file(run, run.shared_dir / "kernel-x" / "kernels.pt", build)
        pairs = (run.shared_dir / "kernel-x" / "pairs.csv").read_text()
        return shared.built_here, shared.source, shared.contents["values"].tolist(), pairs, time.monotonic() - started

    refs = []
    for index, behaviour in enumerate(behaviours):
        env = {**s3, "RAYSEL_CACHE": str(tmp_path / f"node-{index}"), "HF_HUB_OFFLINE": "1"}
        task = ray.remote(num_cpus=1, max_retries=0)(trial).options(runtime_env={"env_vars": env})
        refs.append(task.remote(index, behaviour))
    outcomes = []
    for ref in refs:
        try:
            outcomes.append(ray.get(ref, timeout=300))
        except Exception as err:  # noqa: BLE001 - the trial's own failure is what the test looks at
            outcomes.append(err)
    if actor is not None:
        ray.kill(actor)
    return outcomes


def test_two_nodes_without_a_shared_disk_build_a_shared_file_once(tmp_path, s3, ray_session):
    outcomes = _build_on_nodes(tmp_path, s3, ["ok", "ok"])
    built = [o for o in outcomes if o[0]]
    assert len(built) == 1, outcomes
    builder = f"trial_{outcomes.index(built[0])}"
    (reused,) = [o for o in outcomes if not o[0]]
    assert reused[1] == f"reused:{builder}"  # the waiting trial fetched it from the bucket
    assert built[0][2] == reused[2] == [0, 10, 20, 30, 40]
    assert built[0][3] == reused[3] == f"built by {builder}\n"  # the files beside it came along


def test_with_file_locks_alone_each_node_builds_it(tmp_path, s3, ray_session):
    """What the registry prevents: a file lock on one node does not stop the other."""
    outcomes = _build_on_nodes(tmp_path, s3, ["ok", "ok"], registry=False)
    assert [o[0] for o in outcomes] == [True, True], outcomes


def test_a_build_that_fails_is_taken_over_by_the_waiting_trial(tmp_path, s3, ray_session):
    outcomes = _build_on_nodes(tmp_path, s3, ["raise", "raise"])
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert len(failed) == 1 and "the build failed" in str(failed[0]), outcomes
    (survivor,) = [o for o in outcomes if not isinstance(o, Exception)]
    assert survivor[0] and survivor[2] == [0, 10, 20, 30, 40]


def test_a_builder_whose_process_died_is_replaced_once_its_claim_is_stale(tmp_path, s3, ray_session):
    outcomes = _build_on_nodes(tmp_path, s3, ["die", "die"], stale_after_s=3.0)
    died = [o for o in outcomes if isinstance(o, Exception)]
    assert len(died) == 1, outcomes
    (survivor,) = [o for o in outcomes if not isinstance(o, Exception)]
    assert survivor[0] and survivor[2] == [0, 10, 20, 30, 40]
