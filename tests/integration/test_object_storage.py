"""A sweep whose directory and cache are ``s3://`` URIs, against a real S3 API (moto's server
on 127.0.0.1, reached through ``AWS_ENDPOINT_URL`` like MinIO or any S3-compatible store).

Checks that the storage URI, not the head's disk, holds the results: Tune's experiment and
the trials' checkpoints, the rows, the Optuna journal, the report, and the shared cache
(world, teacher, teacher metrics, each with its completion marker). Then the driver's local
copies are deleted and the report is rebuilt from the URI alone, and a trial on a "new
node" (an empty local cache) downloads the teacher instead of training it again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.ray

BUCKET = "vldistill-test"


@pytest.fixture(scope="module")
def s3(ray_env, tmp_path_factory):
    moto_server = pytest.importorskip("moto.server")
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**ray_env, "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "VLDISTILL_STAGING": str(tmp_path_factory.mktemp("staging"))}
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield env, client
    server.stop()


def _keys(client, prefix: str) -> list[str]:
    keys, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix, **kw)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            return keys
        token = page["NextContinuationToken"]


def _vldistill(args: list[str], env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vldistill.platform.cli", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_sweep_and_cache_live_in_object_storage(s3, tmp_path):
    env, client = s3
    out, cache = f"s3://{BUCKET}/sweeps/smoke", f"s3://{BUCKET}/cache"
    proc = _vldistill(["sweep", "search_space=smoke", f"out_dir={out}", f"cache_dir={cache}", "--no-wandb"],
                      env)
    assert proc.returncode == 0, proc.stderr[-4000:]

    keys = set(_keys(client, "sweeps/smoke/"))
    for name in ("search_space.yaml", "base_config.yaml", "trials.jsonl", "trials.csv", "sweep.json",
                 "optuna.journal", "report.md", "report.html"):
        assert f"sweeps/smoke/{name}" in keys, name
    rows = [json.loads(line) for line in client.get_object(
        Bucket=BUCKET, Key="sweeps/smoke/trials.jsonl")["Body"].read().decode().splitlines()]
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows), rows
    assert all(0.0 <= r["metrics"]["novel_acc"] <= 1.0 for r in rows)
    # Tune wrote its experiment state and every trial's checkpoint to the URI directly.
    assert any(k.startswith("sweeps/smoke/tune/experiment_state") for k in keys), sorted(keys)[:30]
    ckpts = {k.split("/")[3] for k in keys if k.endswith("/last.pt") and "/checkpoint_" in k}
    assert len(ckpts) == 2, sorted(k for k in keys if "tune/" in k)[:30]

    cache_keys = set(_keys(client, "cache/"))
    for sub in ("worlds", "teachers", "teacher_eval"):
        done = [k for k in cache_keys if k.startswith(f"cache/{sub}/") and k.endswith(".done")]
        assert done, f"no complete {sub} entry uploaded: {sorted(cache_keys)[:20]}"
        for marker in done:  # every marker's entry is there (files uploaded before the marker)
            entry = marker[:-len(".done")]
            assert any(k == entry or k.startswith(entry + "/") for k in cache_keys), entry

    # Nothing on the driver's disk is needed any more.
    shutil.rmtree(env["VLDISTILL_STAGING"])
    client.delete_object(Bucket=BUCKET, Key="sweeps/smoke/report.md")
    rep = _vldistill(["report", out], env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    body = client.get_object(Bucket=BUCKET, Key="sweeps/smoke/report.md")["Body"].read().decode()
    assert "smoke" in body and "novel_acc" in body

    # A new node (empty local cache) reads the teacher from the URI instead of training it.
    train = _vldistill(["train", "experiment=smoke", f"cache_dir={cache}", "optim.epochs=1", "progress=false",
                        f"out_dir={tmp_path / 'train'}"], env)
    assert train.returncode == 0, train.stderr[-3000:]
    log = train.stdout + train.stderr
    assert "cache: downloading teachers/" in log, log[-3000:]
    assert "embedded teacher loaded from" in log and "embedded teacher trained" not in log, log[-3000:]


def test_unreachable_storage_is_an_error_before_ray_starts(s3, tmp_path):
    env, _ = s3
    proc = _vldistill(["sweep", "search_space=smoke", f"out_dir=s3://no-such-bucket-{tmp_path.name}/x",
                       "--no-wandb"], env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no-such-bucket" in proc.stderr and "cannot open" in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr
