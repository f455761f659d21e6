"""Runs spread over processes with torchrun (gloo on the CPU), end to end, and its helpers.

The end-to-end tests start real torchrun jobs on real CIFAR-10 (a monkeypatch cannot reach
other processes). Bit-for-bit equality with a single process needs the same CPU thread count:
torchrun sets OMP_NUM_THREADS=1 for each worker when it starts more than one, and a different
count changes the order of float sums in convolutions (the last digits of the losses), so the
single-process references here run with OMP_NUM_THREADS=1 too.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import hlb.bench.runs
from conftest import synthetic_cifar
from hlb.bench.dist import World, _alive, _short, timeout_s, world_from_env
from hlb.bench.overrides import override
from hlb.bench.report import Listener
from hlb.errors import HlbError, UsageError
from hlb.recipes import get_recipe
from hlb.train import PreparedRun

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--recipe", "smoke", "--device", "cpu", "--set", "train_images=256",
        "--set", "test_images=128", "--set", "batch_size=64", "--set", "epochs=1",
        "--set", "whiten_init_images=128", "--set", "widths=8,16,16"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "PYTHONUNBUFFERED": "1", **(extra or {})}


def _torchrun(nproc):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", str(ROOT / "main.py")]


def run(cmd, env=None, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(env),
                          timeout=timeout)


def _same_runs(a, b):
    """The runs and epoch rows of two records agree in everything but the clock."""
    def strip(rows):
        return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]
    return strip(a["runs"]) == strip(b["runs"]) and strip(a["epochs"]) == strip(b["epochs"])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_rows_runs(stdout):
    """The run numbers in the order the table shows them (each run's first row names it)."""
    cells = [line.split("|")[1].strip() for line in stdout.splitlines()
             if line.startswith("|") and "run" not in line]
    return [int(c) for c in cells if c]


@pytest.fixture(scope="module")
def single(cifar_dir, tmp_path_factory):
    """Four runs in one plain process, one CPU thread, seeds 0..3: the reference."""
    out = tmp_path_factory.mktemp("single") / "r.json"
    result = run([sys.executable, str(ROOT / "main.py"), *TINY, "--runs", "4", "--no-save",
                  "--data-dir", str(cifar_dir), "--json", str(out)], env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


def test_two_processes_give_the_runs_of_one(single, cifar_dir, tmp_path, runs_dir):
    data = tmp_path / "data"                  # no cache yet: rank 0 must build it alone
    shutil.copytree(cifar_dir / "cifar-10-batches-py", data / "cifar-10-batches-py")
    out = tmp_path / "r.json"
    result = run([*_torchrun(2), *TINY, "--runs", "4", "--data-dir", str(data),
                  "--json", str(out)])
    assert result.returncode == 0, result.stderr
    text = result.stdout
    # One table, one summary, printed by rank 0 alone, the runs in run order.
    assert text.count("hlb-cifar10: recipe smoke, 4 run(s) on cpu, spread over 2") == 1
    assert text.count("| train_loss |") == 1 and text.count(" tta |") == 4
    assert _first_rows_runs(text) == [0, 1, 2, 3]
    assert text.count("4 run(s) finished") == 1 and text.count("wall clock") == 1
    assert "error:" not in result.stderr and "Traceback" not in result.stderr
    record = json.loads(out.read_text())
    assert [r["seed"] for r in record["runs"]] == [0, 1, 2, 3]
    assert [r["seed"] for r in single["runs"]] == [0, 1, 2, 3]
    assert _same_runs(record, single)
    assert record["stopped"] is None and record["summary"]["n"] == 4
    assert record["dist"]["world_size"] == 2 and record["dist"]["backend"] == "gloo"
    assert len(list(runs_dir.glob("*/record.json"))) == 1      # kept once, by rank 0
    # Prepared once: nobody waited on the lock, one cache, nothing temporary left.
    assert "waiting for another process" not in result.stderr
    assert sorted(p.name for p in data.iterdir()) == [".hlb.lock", "cifar-10-batches-py",
                                                      "cifar10_uint8.pt"]


def test_one_process_under_torchrun_is_a_plain_run(single, cifar_dir, tmp_path):
    out = tmp_path / "r.json"
    result = run([*_torchrun(1), *TINY, "--runs", "2", "--no-save",
                  "--data-dir", str(cifar_dir), "--json", str(out)], env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert [r["seed"] for r in record["runs"]] == [0, 1]
    first_two = {"runs": single["runs"][:2],
                 "epochs": [e for e in single["epochs"] if e["run"] < 2]}
    assert _same_runs(record, first_two)
    assert result.stdout.count("2 run(s) finished") == 1 and record["dist"]["world_size"] == 1


def test_two_machines_joined_by_rendezvous_make_one_job(single, cifar_dir, tmp_path):
    """Two torchrun agents, as on two machines (here both on this one), meet at a c10d
    rendezvous; 3 runs over 2 processes leave rank 1 idle in the last round."""
    out = tmp_path / "r.json"
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=hlb-test",
           str(ROOT / "main.py"), *TINY, "--runs", "3", "--no-save",
           "--data-dir", str(cifar_dir), "--json", str(out)]
    agents = [subprocess.Popen(cmd, cwd=ROOT, env=_env(ONE_THREAD), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
              for _ in range(2)]
    try:
        outputs = [agent.communicate(timeout=120) for agent in agents]
    finally:
        for agent in agents:
            agent.kill()
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    stdout = "".join(o for o, _ in outputs)
    assert stdout.count("3 run(s) finished") == 1 and _first_rows_runs(stdout) == [0, 1, 2]
    record = json.loads(out.read_text())
    assert [r["seed"] for r in record["runs"]] == [0, 1, 2]
    assert [p["local_rank"] for p in record["dist"]["ranks"]] == [0, 0]
    first_three = {"runs": single["runs"][:3],
                   "epochs": [e for e in single["epochs"] if e["run"] < 3]}
    assert _same_runs(record, first_three)


def _children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _rank_of(pid):
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next((int(v[5:]) for v in environ if v.startswith(b"RANK=")), None)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_worker_ends_the_job_and_keeps_the_finished_runs(cifar_dir, tmp_path):
    out, err = tmp_path / "r.json", tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([*_torchrun(2), *TINY, "--runs", "40", "--data-dir",
                                 str(cifar_dir), "--json", str(out)], cwd=ROOT, env=_env(),
                                stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        shown = []
        for line in proc.stdout:                   # the first round: runs 0 and 1 printed
            shown.append(line)
            if sum(" tta |" in s for s in shown) == 2:
                break
        rank1 = [pid for pid in _children(proc.pid) if _rank_of(pid) == 1]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        killed = time.monotonic()
        stdout, _ = proc.communicate(timeout=90)
        took = time.monotonic() - killed
    finally:
        proc.kill()
    stderr = err.read_text()
    assert proc.returncode != 0 and took < 60
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "a worker stopped (rank 1 (pid" in ours[0], stderr
    assert "rank      : 1" in stderr                 # torchrun's own report names it too
    record = json.loads(out.read_text())
    n = len(record["runs"])
    assert 2 <= n < 40 and n % 2 == 0              # whole rounds, gathered before the kill
    assert [r["seed"] for r in record["runs"]] == list(range(n))
    assert "a worker stopped (rank 1" in record["stopped"]
    assert (stdout + "".join(shown)).count(f"{n} run(s) finished") == 1


def test_compare_under_torchrun_keeps_the_pairs(cifar_dir, tmp_path):
    out = tmp_path / "cmp.json"
    flags = " ".join(TINY[4:])
    result = run([*_torchrun(2), "compare", "--recipe", "smoke", "--device", "cpu",
                  "--runs", "3", "--seed", "7", "--a", flags,
                  "--b", flags + " --set bias_lr=0.03",
                  "--data-dir", str(cifar_dir), "--json", str(out), "--no-save"])
    assert result.returncode == 0, result.stderr
    order = [line[:1] for line in result.stdout.splitlines() if " tta |" in line]
    assert order == ["A", "B", "A", "B", "A", "B"]
    assert result.stdout.count("paired over 3 seeds") == 3     # two lines and the verdict
    record = json.loads(out.read_text())
    assert [r["seed"] for r in record["a"]["runs"]] == [7, 8, 9]
    assert [r["seed"] for r in record["b"]["runs"]] == [7, 8, 9]
    assert record["comparison"]["test"] == "paired"


def test_a_data_problem_on_rank_0_stops_every_rank_with_one_message(tmp_path):
    result = run([*_torchrun(2), *TINY, "--data-dir", str(tmp_path / "data")],
                 env={"HLB_CIFAR10_URL": "http://127.0.0.1:9/cifar-10-python.tar.gz"})
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "could not download" in ours[0], result.stderr
    assert "rank 1" not in ours[0] and "hlb-cifar10" in result.stdout


def test_world_from_env():
    assert world_from_env({}) is None
    assert world_from_env({"WORLD_SIZE": "8", "RANK": "3", "LOCAL_RANK": "3"}) == World(3, 8, 3)
    assert world_from_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}).leader
    for env in ({"RANK": "0"}, {"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"},
                {"WORLD_SIZE": "x", "RANK": "0", "LOCAL_RANK": "0"}):
        with pytest.raises(UsageError, match="torchrun|WORLD_SIZE"):
            world_from_env(env)


def test_timeout_comes_from_the_environment():
    assert timeout_s({}) == 300 and timeout_s({"HLB_DIST_TIMEOUT_S": "12.5"}) == 12.5
    with pytest.raises(UsageError, match="HLB_DIST_TIMEOUT_S=-1"):
        timeout_s({"HLB_DIST_TIMEOUT_S": "-1"})


def test_helpers_name_what_happened():
    gloo = ("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed "
            "by peer [127.0.0.1]:56018. This is typically caused by a remote worker crashing.")
    assert _short(RuntimeError(gloo)) == "Connection closed by peer [127.0.0.1]:56018"
    assert _alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()                                   # reaped: gone
    assert not _alive(child.pid)


def test_a_failing_rank_stops_the_rounds_and_keeps_what_was_gathered(monkeypatch):
    """In this process, as a world of one: an out-of-memory in run 2 ends the rounds; the
    record was handed over after each earlier round, marked unfinished."""
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    real_train_run = PreparedRun.run

    def train_run(self, *args, run=0, **kwargs):
        if run == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB.")
        return real_train_run(self, *args, run=run, **kwargs)

    monkeypatch.setattr(PreparedRun, "run", train_run)
    recipe = override(get_recipe("smoke"), TINY[4:][1::2])
    seen = []
    with hlb.bench.runs.scheduler_for("cpu") as scheduler:
        assert isinstance(scheduler, hlb.bench.runs.TorchrunScheduler)
        prepared = hlb.bench.runs.PreparedRecipe(recipe, scheduler.device,
                                           synthetic_cifar(256, 128), seed=5)
        with pytest.raises(hlb.bench.runs.Stopped) as stopped:
            hlb.bench.runs.run_rounds([prepared], 4, [Listener()], scheduler,
                                on_round=lambda records, finished: seen.append(
                                    (len(records[0].results), records[0].stopped)))
    assert seen == [(1, "unfinished: 1 of 4 run(s) gathered"),
                    (2, "unfinished: 2 of 4 run(s) gathered")]
    record, = stopped.value.records
    assert [r.seed for r in record.results] == [5, 6] and record.summary.n == 2
    assert "Tried to allocate 1.00 GiB" in str(stopped.value.error)
    assert record.stopped.startswith("out of GPU memory")
    assert not torch.distributed.is_initialized()


def test_work_on_rank_0_is_shared_and_its_failure_stops_everyone(monkeypatch):
    """In this process, as a world of one: the value of rank 0's work comes back; a known
    failure is one line; an unexpected one is raised as it is, for the last resort."""
    for key, value in {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    with hlb.bench.runs.scheduler_for("cpu") as scheduler:
        assert scheduler.on_leader(lambda: {"runs": [1, 2]}) == {"runs": [1, 2]}
        with pytest.raises(HlbError, match="a bad record") as refused:
            scheduler.on_leader(lambda: (_ for _ in ()).throw(UsageError("a bad record")))
        assert refused.value.exit_code == 2
        with pytest.raises(ZeroDivisionError):
            scheduler.on_leader(lambda: 1 / 0)


def test_accuracy_mode_over_two_processes_gives_the_accuracies_of_one(single, cifar_dir,
                                                                       tmp_path, capsys):
    out = tmp_path / "acc.json"
    result = run([*_torchrun(2), *TINY, "--runs", "4", "--no-save", "--accuracy-only",
                  "--data-dir", str(cifar_dir), "--json", str(out)])
    assert result.returncode == 0, result.stderr
    assert "time: not reported (accuracy mode" in result.stdout
    record = json.loads(out.read_text())
    assert record["accuracy_only"] and record["dist"]["world_size"] == 2
    # Each run equals the plain single-process run with its seed: the same training and
    # the same final accuracies (tests/test_train.py: the per-epoch evaluation left out).
    for ours, theirs in zip(record["runs"], single["runs"]):
        assert (ours["seed"], ours["tta_acc"], ours["val_acc"]) == (
            theirs["seed"], theirs["tta_acc"], theirs["val_acc"])
    assert [e["train_loss"] for e in record["epochs"]] == [
        e["train_loss"] for e in single["epochs"]]


def test_processes_that_share_gpus_take_turns():
    from hlb.bench.dist import placement
    assert placement(3, "cuda", True, 1) == "cuda:0"
    assert placement(5, "cuda", True, 2) == "cuda:1"
    assert placement(1, "cuda", False, 2) == "cuda:1"
    assert placement(2, "cpu", False, 0) == "cpu" and placement(1, "mps", True, 0) == "mps"
    with pytest.raises(HlbError, match="only 1 GPU.*or share them with --accuracy-only"):
        placement(1, "cuda", False, 1)


def test_the_process_group_talks_over_gloo_on_the_cpu_whatever_the_device(monkeypatch):
    """A GPU's ranks too: gloo's timeout is an error we report (NCCL's watchdog would end
    the process), Windows has it, and no collective runs on a GPU beside a captured step."""
    from hlb.bench.dist import Group
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    group = Group(World(rank=1, size=2, local_rank=1), "cuda", 300.0)
    assert (group.device, group.backend) == ("cuda:1", "gloo")
    joined = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: joined.append(device))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a GPU")
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, timeout: joined.append(backend))
    monkeypatch.setattr(group, "exchange", lambda obj: [obj])
    group.start()
    group.close()
    assert joined == ["cuda:1", "gloo"] and group.peers[0]["gpu"] == "a GPU"


def test_alive_asks_the_kernel_where_there_is_no_proc(monkeypatch):
    """macOS: no /proc; the kernel's answer is used (it was never reached before)."""
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda path: False if str(path).startswith("/proc")
                        else real_isdir(path))
    assert _alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not _alive(child.pid)
    monkeypatch.setattr(os, "name", "nt")           # Windows: cannot tell, so not blamed
    assert _alive(child.pid)


def test_verify_under_torchrun_reruns_the_claim_over_the_processes(single, cifar_dir, tmp_path):
    claim, out = tmp_path / "claim.json", tmp_path / "v.json"
    claim.write_text(json.dumps(single))            # four runs of one plain process
    result = run([*_torchrun(2), "verify", str(claim), "--device", "cpu", "--no-save",
                  "--baseline", " ".join(TINY[:2] + TINY[4:]), "--data-dir", str(cifar_dir),
                  "--json", str(out)], env=ONE_THREAD)
    # One epoch on 256 images stays far from the smoke recipe's 50% target: not reproduced,
    # and said once, by rank 0; the reruns themselves equal the claim's runs.
    assert result.returncode == 1, result.stderr
    assert result.stdout.count("verdict: not reproduced") == 1
    assert "does not clear the target 50.00%" in result.stdout
    data = json.loads(out.read_text())
    assert data["dist"]["world_size"] == 2
    assert [r["tta_acc"] for r in data["entry"]["runs"]] == [r["tta_acc"] for r in single["runs"]]
