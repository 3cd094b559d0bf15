"""``ray job submit`` of a smoke sweep to a ``ray start --head`` cluster with token auth on.

What a user does on a real cluster (docs/cluster.md), on this machine: a head started by
``ray start --head`` on 127.0.0.1, ``ray job submit --working-dir <repo> -- vldistill sweep
search_space=smoke ...``, then the job's status, its rows and its report.

Token authentication (Ray 2.60), kept ON, the way Ray documents it: ``ray get-auth-token
--generate`` writes a token to ``~/.ray/auth_token`` of an isolated HOME (a tmp dir, so no
user's token is read or written); ``RAY_AUTH_MODE=token`` is set in the environment of
``ray start`` and of every client (``ray job submit``); the head's processes, and so the
job's entrypoint, inherit both (HOME, mode), so the sweep's ``ray.init(address=...)``
authenticates too. The SDK in this process gets the token as an ``Authorization: Bearer``
header (no process-wide ``RAY_AUTH_MODE``). A request without the token is checked to be
refused, so the test would notice auth being off.

The head runs with ``--block`` in a process this test owns, and teardown stops *that* head
(SIGTERM to it, then its process group and any process of its own temp dir): ``ray stop``
would kill every Ray process on the machine, other sessions' included.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 300


def _bin(name: str) -> str:
    """An executable of the environment running the tests (the job sees this PATH)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found next to {sys.executable} nor on PATH")
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _get(url: str, token: str | None, timeout: float = 5.0) -> int:
    """HTTP status of GET url (0: nothing listening yet)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


@dataclass
class Head:
    url: str
    env: dict[str, str]
    token: str
    log: Path
    temp_dir: Path


def _own_processes(temp_dir: Path) -> list[int]:
    """Pids whose command line names this head's temp dir (its GCS, raylet, workers...)."""
    mine, needle = [], str(temp_dir).encode()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "cmdline").read_bytes():
                mine.append(int(entry.name))
        except OSError:
            continue
    return [p for p in mine if p != os.getpid()]


def _stop_head(proc: subprocess.Popen, temp_dir: Path) -> None:
    """Stop this test's head and nothing else: its ``ray start --block`` process cleans up
    the processes it started on SIGTERM; stragglers of its group / temp dir are killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the session started for the head (ours)
    except (ProcessLookupError, PermissionError):
        pass
    if sys.platform.startswith("linux"):
        deadline = time.time() + 15
        while (left := _own_processes(temp_dir)) and time.time() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.5)


@pytest.fixture
def ray_head(ray_env, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = dict(ray_env)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    env.update(HOME=str(home), RAY_AUTH_MODE="token",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0")
    ray = _bin("ray")
    subprocess.run([ray, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, text=True, timeout=120)
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 32

    gcs, dash, client, agent_http, agent_grpc, metrics, rt_env = _free_ports(7)
    log = tmp_path / "ray-start.log"
    # Short on purpose: Ray puts unix sockets under it (108-byte path limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="vlr", dir="/tmp"))
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2", "--num-gpus=0",
             "--disable-usage-stats", f"--temp-dir={temp_dir}", f"--ray-client-server-port={client}",
             f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
             f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={rt_env}"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while _get(f"{url}/api/version", token) != 200:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            if time.time() > deadline:
                pytest.fail(f"the dashboard at {url} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield Head(url=url, env=env, token=token, log=log, temp_dir=temp_dir)
    finally:
        _stop_head(proc, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_runs_a_smoke_sweep_on_the_cluster(ray_head, cache_dir, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    # Auth is really on: the job API refuses a request without the token.
    assert _get(f"{ray_head.url}/api/jobs/", None) in (401, 403)
    assert _get(f"{ray_head.url}/api/jobs/", ray_head.token) == 200

    sweep = tmp_path / "sweep"
    sid = f"vldistill-smoke-{uuid.uuid4().hex[:8]}"
    t0 = time.time()
    try:
        submit = subprocess.run(
            [_bin("ray"), "job", "submit", "--address", ray_head.url, "--submission-id", sid,
             "--working-dir", str(REPO), "--",
             "vldistill", "sweep", "search_space=smoke", f"out_dir={sweep}", f"cache_dir={cache_dir}",
             "--no-wandb"],
            env=ray_head.env, cwd=REPO, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        timed_out = False
    except subprocess.TimeoutExpired as e:
        submit, timed_out = e, True
    elapsed = time.time() - t0

    client = JobSubmissionClient(ray_head.url, headers={"Authorization": f"Bearer {ray_head.token}"})
    status = client.get_job_status(sid)
    logs = client.get_job_logs(sid)
    out = (submit.stdout or "") if isinstance(submit.stdout, str) else (submit.stdout or b"").decode()
    err = (submit.stderr or "") if isinstance(submit.stderr, str) else (submit.stderr or b"").decode()
    if timed_out:
        client.stop_job(sid)
    context = f"status {status}; submit stderr:\n{err[-2000:]}\njob logs:\n{logs[-4000:]}"
    assert not timed_out, f"job still running after {JOB_TIMEOUT_S} s; {context}"
    assert submit.returncode == 0, context
    assert status == JobStatus.SUCCEEDED, context
    assert "succeeded" in out.lower(), out[-2000:]

    # The sweep joined this cluster (RAY_ADDRESS from the job) instead of starting its own Ray.
    assert "joining the Ray cluster" in logs, context
    assert "starting a local Ray instance" not in logs, context

    rows = [json.loads(line) for line in (sweep / "trials.jsonl").read_text().splitlines() if line.strip()]
    assert len(rows) == 2, rows
    assert [r["status"] for r in rows] == ["completed", "completed"], [r.get("error") for r in rows]
    assert (sweep / "report.md").is_file()
    assert (sweep / "trials.csv").is_file()

    # The uploaded working dir (unpacked by the head) honours .gitignore and Ray's excludes:
    # the package's code, no runs/, venvs, .git or caches; far below Ray's 100 MiB cap.
    unpacked = sorted({p.resolve() for p in ray_head.temp_dir.glob(
        "session_*/runtime_resources/working_dir_files/*") if p.is_dir()})  # session_latest: a link
    assert len(unpacked) == 1, unpacked
    files = [p for p in unpacked[0].rglob("*") if p.is_file()]
    size_mib = sum(p.stat().st_size for p in files) / 2**20
    top = {p.relative_to(unpacked[0]).parts[0] for p in files}
    assert {"vldistill", "pyproject.toml"} <= top, top
    assert not top & {".git", ".venv", "venv", "runs", "outputs", "wandb", "vldistill.egg-info"}, top
    assert size_mib < 10, f"working_dir upload is {size_mib:.1f} MiB"
    print(f"job {sid}: {status} in {elapsed:.0f} s; working_dir {len(files)} files, {size_mib:.2f} MiB")
