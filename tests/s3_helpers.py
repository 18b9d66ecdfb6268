"""A real S3-compatible server for tests: moto's standalone server (as Ray's own tests use) on 127.0.0.1."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import requests
from mlflow_helpers import free_port

S3_BUCKET = "raysel-test"


@contextlib.contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto_server on a free port with an empty bucket ``S3_BUCKET``; yields the environment that reaches
    it (pyarrow, boto3 and MLflow honour AWS_ENDPOINT_URL). Stopped afterwards."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(env["AWS_ENDPOINT_URL"], timeout=2)
                break
            except requests.RequestException:
                assert server.poll() is None and time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.2)
        subprocess.run([sys.executable, "-c", f"import boto3; boto3.client('s3').create_bucket(Bucket={S3_BUCKET!r})"],
                       env=env, check=True, timeout=60)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)
