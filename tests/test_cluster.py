"""The cluster path on one machine: launch/local-cluster.sh starts a head and a second worker node
(`ray start`, token authentication on), launch/submit.sh submits a sweep as a Ray job, and the trials
run on both nodes and log to a real MLflow server (launch/mlflow-server.sh's set-up).

Slow (about 2 minutes); the cluster has its own temp dir and `local-cluster.sh stop` stops only its
processes."""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests
import yaml
from browser_helpers import ARTIFACTS, CHROMIUM, chromium, token_proxy
from mlflow_helpers import Rest, free_port, serve_mlflow
from s3_helpers import S3_BUCKET

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# a small IGF run (the tiny random GPT-2): its secondary learner is the file the trials share
IGF_PARAMS = {"context_len": 16, "size_objective_set": 8, "min_len": 64, "ig_contexts": 48, "ig_chunk_size": 16,
              "secondary_learner_max_epochs": 3, "learner_lr": 1e-3, "eval_examples": 16, "max_batches": 6,
              "batch_size": 4, "eval_every": 2, "switch_step": 2, "threshold_units": "learner", "lr": 1e-3,
              "threshold_mode": "constant"}


@pytest.fixture
def local_cluster():
    """The two-node cluster of launch/local-cluster.sh, on free ports; stopped afterwards."""
    with _local_cluster(os.environ) as env:
        yield env


@contextlib.contextmanager
def _local_cluster(base_env) -> Iterator[dict[str, str]]:
    env = {**base_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_HEAD_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(free_port())}
    started = subprocess.run(["bash", str(ROOT / "launch" / "local-cluster.sh"), "start"], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield env
    finally:
        subprocess.run(["bash", str(ROOT / "launch" / "local-cluster.sh"), "stop"], env=env, cwd=ROOT,
                       capture_output=True, timeout=120)


def test_a_sweep_submitted_as_a_ray_job_runs_on_both_nodes_and_logs_to_mlflow(tmp_path, local_cluster,
                                                                               mlflow_server):
    """The README's cluster example as written: the spec's default (relative) storage_path, submitted
    from the project's directory; the results land there, not in the job's temporary copy of it."""
    url = mlflow_server.wait_healthy()
    project = tmp_path / "project"  # what `--working-dir .` uploads: here just the spec
    project.mkdir()
    (project / "cluster-sweep.yaml").write_text(yaml.safe_dump({
        "name": "cluster-sweep", "method": "standard", "model": {"name": "tiny-gpt2-random"},
        "data": {"name": "pydocs"},
        "params": {"max_steps": 6, "eval_every": 3, "context_len": 32, "batch_size": 8, "eval_examples": 32},
        "protocol": {"kind": "seeds", "seeds": [0, 1, 2, 3], "metric": "test_perplexity", "mode": "min"},
        "resources": {"max_concurrent_trials": 2}}))
    env = {**local_cluster, "RAY_ADDRESS": f"http://127.0.0.1:{local_cluster['RAY_DASHBOARD_PORT']}",
           "MLFLOW_TRACKING_URI": url, "HF_HUB_OFFLINE": "1"}
    job = subprocess.run(["bash", str(ROOT / "launch" / "submit.sh"), "cluster-sweep.yaml"], env=env, cwd=project,
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, (job.stdout + job.stderr)[-6000:]
    assert "succeeded" in job.stdout.lower(), job.stdout[-3000:]
    assert "raysel-cluster-sweep-" in job.stdout  # the job's submission id names the sweep (the Jobs page)
    results = project / "raysel_results" / "cluster-sweep"
    assert (results / "report" / "report.md").is_file() and (results / "trials.csv").is_file()

    rest = Rest(url)
    runs = rest.search_runs(rest.experiment_by_name("cluster-sweep")["experiment_id"])
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    trials = [t for t in tags if t.get("raysel.role") == "trial"]
    assert len(trials) == 4 and len([t for t in tags if t.get("raysel.role") == "sweep"]) == 1
    assert sorted(int(t["raysel.seed"]) for t in trials) == [0, 1, 2, 3]
    assert all(r["info"]["status"] == "FINISHED" for r in runs)
    assert len({t["raysel.node_id"] for t in trials}) == 2  # both nodes ran trials
    _look_at_the_dashboard(f"http://127.0.0.1:{local_cluster['RAY_DASHBOARD_PORT']}", tmp_path)


def test_two_nodes_sharing_only_an_s3_bucket_and_the_mlflow_server(tmp_path, s3):
    """The cluster example with storage_path on S3 and an MLflow server whose artifacts go to the same
    bucket, each node keeping raysel's files in its own directory (RAYSEL_CACHE) as machines without a
    shared disk would: an IGF sweep's trials run on both nodes, its secondary learner is built once (the
    sweep's registry) and reaches the other node through the bucket; the sweep's files, its report and
    the MLflow artifacts are in the bucket; nothing lands in the directory submit.sh ran in."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "s3-sweep.yaml").write_text(yaml.safe_dump({
        "name": "s3-sweep", "method": "igf", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
        "params": IGF_PARAMS,
        "protocol": {"kind": "seeds", "seeds": [0, 1, 2, 3], "metric": "test_perplexity", "mode": "min"},
        "resources": {"max_concurrent_trials": 2}, "storage_path": f"s3://{S3_BUCKET}/sweeps"}))
    disks = {"HEAD_NODE_ENV": f"RAYSEL_CACHE={tmp_path / 'head-disk'}",
             "WORKER_NODE_ENV": f"RAYSEL_CACHE={tmp_path / 'worker-disk'}"}
    # the nodes get the bucket's endpoint and credentials where they start (as instance roles would give them)
    with serve_mlflow(tmp_path / "mlflow", f"s3://{S3_BUCKET}/mlflow", s3) as mlflow_server, \
            _local_cluster({**s3, **disks}) as cluster:
        url = mlflow_server.wait_healthy()
        env = {**cluster, "RAY_ADDRESS": f"http://127.0.0.1:{cluster['RAY_DASHBOARD_PORT']}",
               "MLFLOW_TRACKING_URI": url, "HF_HUB_OFFLINE": "1"}
        job = subprocess.run(["bash", str(ROOT / "launch" / "submit.sh"), "s3-sweep.yaml"], env=env, cwd=project,
                             capture_output=True, text=True, timeout=900)
        assert job.returncode == 0, (job.stdout + job.stderr)[-6000:]
        rest = Rest(url)
        runs = rest.search_runs(rest.experiment_by_name("s3-sweep")["experiment_id"])
    assert sorted(p.name for p in project.iterdir()) == ["s3-sweep.yaml"]  # nothing written here
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in runs]
    trials = [(r, t) for r, t in zip(runs, tags) if t.get("raysel.role") == "trial"]
    assert len(trials) == 4 and all(r["info"]["status"] == "FINISHED" for r, _ in trials)
    assert len({t["raysel.node_id"] for _, t in trials}) == 2
    (builder,) = [t["raysel.trial_id"] for _, t in trials if t["igf.learner"] == "built"]
    assert sorted(t["igf.learner"] for _, t in trials) == ["built"] + [f"reused:{builder}"] * 3
    for disk in ("head-disk", "worker-disk"):  # each node found the learner in its own directory
        assert list((tmp_path / disk).glob("storage/*/artifacts/shared/igf-learner-*/learner.pt")), disk
    listed = subprocess.run([sys.executable, "-c", "import boto3, sys; print('\\n'.join(o['Key'] for o in boto3.client("
                             f"'s3').list_objects_v2(Bucket={S3_BUCKET!r}).get('Contents', [])))"],
                            env=s3, capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert {"sweeps/s3-sweep/sweep.json", "sweeps/s3-sweep/trials.csv", "sweeps/s3-sweep/report/report.md"} <= set(listed)
    assert any(k.startswith("mlflow/") and k.endswith("report.md") for k in listed)  # MLflow's artifacts too


def _look_at_the_dashboard(dashboard: str, tmp_path: Path) -> None:
    """Ray's dashboard tells the sweep's job and trials apart: the job by its submission id and metadata, the
    trials' actors by arm, stage, seed and trial id (their repr). Screenshots of the Jobs and Actors pages
    (headless Chromium, through a proxy adding the cluster's token) are kept in test-artifacts/."""
    token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()
    with token_proxy(dashboard, token) as url:
        jobs = requests.get(f"{url}/api/jobs/", timeout=60).json()
        (job,) = [j for j in jobs if (j.get("submission_id") or "").startswith("raysel-cluster-sweep-")]
        assert job["metadata"]["raysel.spec"] == "cluster-sweep"
        assert job["metadata"]["job_name"] == "raysel cluster-sweep"  # the Jobs page's Name column
        actors = requests.get(f"{url}/api/v0/actors", params={"detail": "true", "limit": 1000}, timeout=60).json()
        listed = actors["data"]["result"]["result"]
        names = [a.get("repr_name", "") for a in listed if a["class_name"] == "RayselTrial"]
        assert names, sorted({(a["class_name"], a.get("repr_name", "")) for a in listed})
        assert names and all(re.fullmatch(r"raysel_trial\(standard-seeds-seed[0-3]-\w+_\d{5}\)", n) for n in names), names
        if not Path(CHROMIUM).exists():
            return
        ARTIFACTS.mkdir(exist_ok=True)
        for page, expected in (("jobs", "raysel cluster-sweep"), ("actors", names[0])):
            dom = chromium(f"{url}/#/{page}", tmp_path / f"profile-{page}", "--dump-dom")
            assert expected in dom.stdout, dom.stdout[-3000:]
            shot = ARTIFACTS / f"ray-dashboard-{page}.png"
            chromium(f"{url}/#/{page}", tmp_path / f"profile-{page}-shot", f"--screenshot={shot}")
            assert shot.is_file() and shot.stat().st_size > 20_000


def _worker_node_raylet() -> int | None:
    """The PID of the worker node's raylet (started with the raysel_worker_node resource)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "/raylet" in cmdline.split(" ")[0] and "raysel_worker_node" in cmdline:
            return int(proc.name)
    return None


def test_a_killed_worker_node_restarts_its_trial_from_its_checkpoint(tmp_path, local_cluster, mlflow_server):
    """The worker node dies (its raylet SIGKILLed, its trial process with it) while both nodes run a trial:
    the trial restarts from its last checkpoint on the head, the job succeeds, and MLflow has one run per
    trial whose metrics continue (every step logged once)."""
    import signal
    import time

    url = mlflow_server.wait_healthy()
    spec = tmp_path / "node-kill.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "node-kill", "method": "standard", "model": {"name": "tiny-gpt2-random"}, "data": {"name": "pydocs"},
        "params": {"max_steps": 60, "eval_every": 10, "context_len": 32, "batch_size": 8, "eval_examples": 32},
        "protocol": {"kind": "seeds", "seeds": [0, 1], "metric": "test_perplexity", "mode": "min"},
        "resources": {"max_concurrent_trials": 2, "max_failures": 2},
        "storage_path": str(tmp_path / "results")}))
    env = {**local_cluster, "RAY_ADDRESS": f"http://127.0.0.1:{local_cluster['RAY_DASHBOARD_PORT']}",
           "MLFLOW_TRACKING_URI": url, "HF_HUB_OFFLINE": "1"}
    job = subprocess.Popen(["bash", str(ROOT / "launch" / "submit.sh"), str(spec)], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.time() + 300
    while time.time() < deadline and job.poll() is None:
        trials = list((tmp_path / "results" / "node-kill").glob("*/trial_*"))
        if len(trials) == 2 and all(list(t.glob("checkpoint_*")) for t in trials):
            killed = _worker_node_raylet()
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.5)
    output, _ = job.communicate(timeout=600)
    assert killed, "the trials finished before a node could be killed:\n" + output[-3000:]
    assert job.returncode == 0, output[-6000:]

    rest = Rest(url)
    runs = rest.search_runs(rest.experiment_by_name("node-kill")["experiment_id"])
    trials = [r for r in runs if {t["key"]: t["value"] for t in r["data"]["tags"]}.get("raysel.role") == "trial"]
    assert len(trials) == 2 and all(r["info"]["status"] == "FINISHED" for r in trials)
    restored = [r for r in trials if any(t["key"] == "raysel.restored_from_step" for t in r["data"]["tags"])]
    assert len(restored) == 1  # the trial of the dead node, resumed from a checkpoint (not from step 0)
    assert int({t["key"]: t["value"] for t in restored[0]["data"]["tags"]}["raysel.restored_from_step"]) >= 10
    for run in trials:
        steps = [m["step"] for m in rest.metric_history(run["info"]["run_id"], "train_loss")]
        assert sorted(steps) == list(range(1, 61))  # continued, not logged twice


def _ray_env(ray_tmp: Path) -> dict[str, str]:
    """The environment of a cluster in its own ``ray_tmp``, token authentication on (as launch/ sets it up)."""
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token", "--generate"], env=env,
                   capture_output=True, check=True, timeout=120)  # ~/.ray/auth_token, unless it exists
    return env


def test_a_local_sweep_starts_its_own_ray_beside_a_running_cluster(tmp_path, lm_spec):
    """A `ray start --head` on this machine (in its own RAY_TMPDIR, as a user's default one would be)
    leaves its address where Ray's default `ray.init()` would find and join it; a sweep given no
    address starts its own Ray instead: no driver of it appears in that cluster's session."""
    import shutil
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    env = _ray_env(ray_tmp)
    address = f"127.0.0.1:{free_port()}"
    head = subprocess.run([str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={address.split(':')[1]}",
                           "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
                          env=env, capture_output=True, text=True, timeout=180)
    try:
        assert head.returncode == 0, head.stdout + head.stderr
        session = (ray_tmp / "ray" / "session_latest").resolve()
        assert (ray_tmp / "ray" / "ray_current_cluster").is_file()  # what ray.init() would join
        spec = lm_spec(name="beside", params={"max_steps": 2, "eval_every": 2},
                       protocol={"kind": "seeds", "seeds": [0], "metric": "test_perplexity", "mode": "min"})
        code = f"import raysel, sys; sys.exit(raysel.run_sweep({spec!r}, progress=False).num_errors)"
        sweep = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                               timeout=600)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        assert not list((session / "logs").glob("python-core-driver-*")), "the sweep joined the other cluster"

        # pointed at that head (a plain `ray start`: its monitor only reports, it adds no nodes), a trial
        # needing a resource no node has is refused at once, before any run is logged
        spec.update(name="refused", resources={"custom_per_worker": {"raysel_late_node": 1}})
        (tmp_path / "refused.yaml").write_text(yaml.safe_dump(spec))
        command = [str(Path(sys.executable).parent / "raysel"), "sweep", "refused.yaml", "--address", address,
                   "--no-progress", "--set", "tracking.uri=sqlite:///refused.db"]
        # a shell without RAY_AUTH_MODE=token is told the one variable to export
        no_token = subprocess.run(command, env={k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}, cwd=tmp_path,
                                  capture_output=True, text=True, timeout=300)
        assert no_token.returncode == 2, no_token.stdout + no_token.stderr
        assert no_token.stderr.strip().splitlines()[-1] == (
            f"error: invalid sweep spec: ray.address: the Ray cluster at {address!r} wants its authentication token; "
            "export RAY_AUTH_MODE=token (the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        refused = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith("error: invalid sweep spec: resources.custom_per_worker.raysel_late_node: a trial "
                               "needs 1 raysel_late_node, but no node has that; the cluster has node 1: 1 CPU"), line
        assert line.endswith("; no autoscaler"), line
        assert not (tmp_path / "refused.db").exists()
    finally:
        _stop_processes_of(ray_tmp)  # that cluster's processes, and only them
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _stop_processes_of(directory: Path) -> None:
    """SIGTERM, then SIGKILL, the processes whose command line names ``directory``."""
    import signal
    import time

    def pids() -> list[int]:
        found = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    if str(directory).encode() in (proc / "cmdline").read_bytes():
                        found.append(int(proc.name))
                except OSError:
                    continue
        return found

    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while pids() and time.monotonic() < deadline:
            time.sleep(0.2)


def test_local_cluster_refuses_a_taken_port_before_starting_anything(tmp_path):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "RAY_HEAD_PORT": str(free_port()), "RAY_DASHBOARD_PORT": str(port),
           "RAY_CLUSTER_TEMP_DIR": str(tmp_path / "cluster")}
    try:
        started = subprocess.run(["bash", str(ROOT / "launch" / "local-cluster.sh"), "start"], env=env, cwd=ROOT,
                                 capture_output=True, text=True, timeout=60)
    finally:
        taken.close()
    assert started.returncode == 2
    assert started.stderr.strip() == (f"error: port {port} (RAY_DASHBOARD_PORT) is taken; "
                                      "set RAY_DASHBOARD_PORT to a free port")
    assert not (tmp_path / "cluster").exists()  # no Ray started


def _autoscaling_head(ray_tmp: Path, port: int, node_types: dict[str, dict]) -> dict[str, str]:
    """A head whose monitor autoscales with Ray's fake multi-node provider: the nodes it adds are local Ray
    nodes, in ``ray_tmp`` like the head. Returns the environment that reaches it (token authentication on)."""
    env = _ray_env(ray_tmp)
    ray_bin = str(Path(sys.executable).parent / "ray")
    config = {
        "cluster_name": "raysel-autoscaling-test", "max_workers": len(node_types), "upscaling_speed": 1.0,
        "idle_timeout_minutes": 5, "auth": {"ssh_user": "ray"},
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {"ray.head.default": {"resources": {"CPU": 2}, "node_config": {}, "max_workers": 0},
                                 **{name: {"resources": resources, "node_config": {}, "min_workers": 0,
                                           "max_workers": 1} for name, resources in node_types.items()}},
        "head_node_type": "ray.head.default",
        **{key: [] for key in ("cluster_synced_files", "initialization_commands", "setup_commands",
                               "head_setup_commands", "worker_setup_commands", "head_start_ray_commands",
                               "worker_start_ray_commands")},
        "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False}
    (ray_tmp / "autoscaling.yaml").write_text(yaml.safe_dump(config))
    head = subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                           "--disable-usage-stats", f"--autoscaling-config={ray_tmp / 'autoscaling.yaml'}"],
                          env={**env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"},
                          capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stdout + head.stderr
    return env


def test_a_sweep_waits_for_the_node_the_autoscaler_adds_and_ctrl_c_while_waiting_kills_it(tmp_path, lm_spec):
    """A trial needs a custom resource no node has yet, on a cluster whose autoscaler may add a node type
    that has it: the sweep says it waits (nothing runs). Ctrl+C there exits 130 with the parent run KILLED;
    a second sweep goes on once the autoscaler has added its node, and finishes."""
    import shutil
    import signal
    import tempfile
    import threading
    import time

    import mlflow

    ray_tmp = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        # one node type per sweep: the node the interrupted sweep asked for must not serve the second one
        env = _autoscaling_head(ray_tmp, port, {"late_a": {"CPU": 1, "raysel_late_a": 1},
                                                "late_b": {"CPU": 1, "raysel_late_b": 1}})

        def start_sweep(name: str, resource: str) -> tuple[subprocess.Popen, list[str]]:
            spec = lm_spec(name=name, params={"max_steps": 2, "eval_every": 2}, protocol={"seeds": [0]},
                           resources={"custom_per_worker": {resource: 1}, "scale_timeout_s": 300})
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(spec))
            sweep = subprocess.Popen([str(Path(sys.executable).parent / "raysel"), "sweep", str(path), "--address",
                                      address, "--no-progress"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
            lines: list[str] = []
            threading.Thread(target=lambda: lines.extend(sweep.stdout), daemon=True).start()
            deadline = time.monotonic() + 180
            while not any("waiting for the cluster to scale up" in line for line in lines):
                assert sweep.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
                time.sleep(0.2)
            return sweep, lines

        stopped, lines = start_sweep("stopped", "raysel_late_a")
        stopped.send_signal(signal.SIGINT)
        assert stopped.wait(timeout=120) == 130, "".join(lines)[-3000:]
        assert any("interrupted while waiting for the cluster to scale up" in line for line in lines)
        client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        parent = json.loads((tmp_path / "results" / "stopped" / "sweep.json").read_text())["parent_run_id"]
        assert client.get_run(parent).info.status == "KILLED"

        waiting, lines = start_sweep("waits", "raysel_late_b")
        assert waiting.wait(timeout=600) == 0, "".join(lines)[-3000:]
        assert any("the cluster has room for a trial after" in line for line in lines)
    finally:
        _stop_processes_of(ray_tmp)  # that cluster's processes (the nodes it added too), and only them
        shutil.rmtree(ray_tmp, ignore_errors=True)
