"""Real smoke-sized sweeps seen through the research lead's tools: W&B groups and the summary run
(read back from the offline runs' own files), optuna-dashboard over the sweep's journal
(the ``dashboard`` extra that CI's install brings), and ``--plan`` on a built cache."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray


def _cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vldistill.platform.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600)


# The smoke space with a third trial: on 2 CPUs it starts when the first two end, so a sweep
# interrupted at its first row has work left for --resume.
SPACE = """
name: tools
metric: novel_acc
mode: max
sampler: random
sampler_seed: 0
num_samples: 3
seeds: [0]
resources: {cpu: 1, gpu: 0, workers: 1, max_concurrent: 2}
overrides: [experiment=smoke]
params:
  distill.weights.mse: {choice: [0.0, 1.0], baseline: 0.0}
"""


@pytest.fixture(scope="module")
def sweeps(ray_env, module_dir) -> dict:
    """Two sweeps of one space with W&B (offline); the first interrupted (Ctrl-C) after its
    first trial and resumed."""
    root = module_dir("tools")
    space = root / "tools.yaml"
    space.write_text(SPACE)
    out = {"a": root / "a", "b": root / "b"}
    proc = _cli(ray_env, "sweep", f"search_space={space}", f"out_dir={out['b']}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    driver = subprocess.Popen([sys.executable, "-m", "vldistill.platform.cli", "sweep",
                               f"search_space={space}", f"out_dir={out['a']}"],
                              env=ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows = out["a"] / "trials.jsonl"
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and driver.poll() is None:
        if rows.is_file() and rows.read_text().strip():
            break  # a trial finished and one is left: interrupt now
        time.sleep(0.5)
    assert driver.poll() is None, "the sweep ended before it could be interrupted"
    driver.send_signal(signal.SIGINT)
    driver.communicate(timeout=300)
    out["a_rows_before_resume"] = len(rows.read_text().splitlines())
    out["a_runs_before_resume"] = {p.name for p in (out["a"] / "wandb").glob("offline-run-*")}
    proc = _cli(ray_env, "sweep", "--resume", str(out["a"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _records(path: Path):
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``: a LevelDB-style
    log of 32 KiB blocks after a 7-byte header; each chunk: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    pos, block, chunks = 7, 32768, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            rec = pb.Record()
            rec.ParseFromString(b"".join(chunks))
            chunks = []
            yield rec


def _runs(sweep_dir: Path, job_type: str | None = None) -> list[tuple[Path, str, str]]:
    """``(run dir, group, job type)`` of every offline W&B run of a sweep."""
    found = []
    for run_dir in sorted((sweep_dir / "wandb").glob("offline-run-*")):
        for rec in _records(next(run_dir.glob("run-*.wandb"))):
            if rec.WhichOneof("record_type") == "run":
                if job_type in (None, rec.run.job_type):
                    found.append((run_dir, rec.run.run_group, rec.run.job_type))
                break
    return found


def test_two_sweeps_of_one_space_have_different_groups_and_a_resume_keeps_its_own(sweeps):
    groups = {}
    for name in ("a", "b"):
        trials = _runs(sweeps[name], "trial")
        assert len(trials) >= 3, trials
        assert len({g for _, g, _ in trials}) == 1, trials
        groups[name] = trials[0][1]
        assert (sweeps[name] / "wandb_group").read_text().strip() == groups[name]
    assert groups["a"] != groups["b"] and all(g.startswith("tools-") for g in groups.values())
    # the resumed sweep ran its last trial(s) in its own group
    assert 1 <= sweeps["a_rows_before_resume"] < 3
    after = [g for d, g, _ in _runs(sweeps["a"], "trial") if d.name not in sweeps["a_runs_before_resume"]]
    assert after and set(after) == {groups["a"]}
    # a summary run at the end of each sweep: the interrupted one, its resume, the other sweep
    assert [g for _, g, _ in _runs(sweeps["a"], "report")] == [groups["a"]] * 2
    assert [g for _, g, _ in _runs(sweeps["b"], "report")] == [groups["b"]]


def test_the_summary_run_holds_the_reports_tables_and_plots(sweeps):
    run_dir = _runs(sweeps["b"], "report")[0][0]
    tables = {p.name.split("_")[0]: p for p in (run_dir / "files" / "media" / "table" / "report").glob("*.table.json")}
    assert {"headline", "trials"} <= set(tables), sorted(tables)
    trials = json.loads(tables["trials"].read_text())
    assert len(trials["data"]) == 3 and "status" in trials["columns"]
    rows = [json.loads(line) for line in (sweeps["b"] / "trials.jsonl").read_text().splitlines()]
    ids = {r[trials["columns"].index("trial_id")] for r in trials["data"]}
    assert ids == {r["trial_id"] for r in rows}
    assert list((run_dir / "files" / "media" / "images").rglob("*.png")), "no plot logged"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def test_optuna_dashboard_opens_the_sweeps_study(sweeps):
    exe = Path(sys.executable).parent / "optuna-dashboard"
    assert exe.is_file(), "optuna-dashboard is not installed (pip install -e '.[dev]' brings the dashboard extra)"
    port = _free_port()
    journal = sweeps["b"] / "optuna.journal"
    server = subprocess.Popen([str(exe), str(journal), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # ready when the port answers (or the server exited: then fail with its output)
            assert server.poll() is None, server.stdout.read()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "optuna-dashboard did not open its port"
                time.sleep(0.1)
        studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["tools"]
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{studies[0]['study_id']}")
        assert len(detail["trials"]) == 3
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode is not None


def test_plan_on_the_built_cache_finds_the_shared_assets(sweeps, ray_env):
    before = sorted(p.name for p in sweeps["b"].iterdir())
    proc = _cli(ray_env, "sweep", "search_space=smoke", "--plan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for asset in ("world", "teacher (embedded)"):
        state = next(ln for ln in lines if ln.strip().startswith(asset)).split()[-1]
        assert state == "present", (asset, proc.stdout)
    assert "2 configurations x 1 seeds [0] = 2 trials" in proc.stdout
    assert sorted(p.name for p in sweeps["b"].iterdir()) == before
