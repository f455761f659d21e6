"""The GPU check's summary: it reads our records and a reference script's table."""

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from gpu_summary import (clock_lines, clock_samples, epoch_line, our_epochs,  # noqa: E402
                         reference_epochs, reference_runs, stage_starts)
from profile_run import busy_and_gaps, kind  # noqa: E402

REFERENCE_LOG = """\
|  run     |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |
|  warmup  |      0  |     0.1000  |   0.1000  |               |        9.0000  |
|          |   eval  |     0.1000  |   0.1000  |       0.1000  |        9.5000  |
|       0  |      0  |     0.7300  |   0.5017  |               |        0.2513  |
|          |   eval  |     0.9740  |   0.9308  |       0.9392  |        2.0000  |
|       1  |   eval  |     0.9740  |   0.9308  |       0.9410  |        1.0000  |
Mean: 0.9401    Std: 0.0013
"""


def test_reference_runs_skip_the_warmup(tmp_path):
    log = tmp_path / "ref.log"
    log.write_text(REFERENCE_LOG)
    assert reference_runs(log) == ([0.9392, 0.9410], [2.0, 1.0])


def test_time_to_each_epoch_compares_with_the_reference_even_without_finished_runs(tmp_path):
    log = tmp_path / "ref.log"
    log.write_text(REFERENCE_LOG)
    reference = reference_epochs(log)
    assert reference == {1: [0.2513]}           # the warm-up's epoch 0 (9.0 s) is skipped
    # Two runs reached epoch 1, one of them epoch 2, and none finished.
    record = {"epochs": [{"run": 0, "epoch": 1, "time_s": 0.2}, {"run": 1, "epoch": 1,
                                                                 "time_s": 0.3},
                         {"run": 1, "epoch": 2, "time_s": 0.5}]}
    ours = our_epochs(record)
    assert ours == {1: [0.2, 0.3], 2: [0.5]}
    assert epoch_line("x", ours, reference).endswith("1: 0.250 vs 0.251 (0.99)")
    assert epoch_line("x", {}, reference) is None


def test_summary_gives_the_time_ratio(tmp_path):
    log = tmp_path / "ref.log"
    log.write_text(REFERENCE_LOG)
    record = {"recipe": {"name": "94"}, "warmup_s": 1.0,
              "environment": {"gpu": "X", "torch": "t", "cuda": "c", "date": "d"},
              "summary": {"peak_mem_reserved": 2**30},
              "runs": [{"tta_acc": 0.94, "train_time_s": 3.0, "diverged": False},
                       {"tta_acc": 0.95, "train_time_s": 3.0, "diverged": False},
                       {"tta_acc": None, "train_time_s": 0.1, "diverged": True}]}
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps(record))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_summary.py"), str(ours),
                          "--reference", str(log)], capture_output=True, text=True, check=True)
    assert "94         n=2" in out.stdout
    assert "time ratio 94/reference: 2.000" in out.stdout      # 3.0 s against 1.5 s
    assert "reference  n=2" in out.stdout
    # 0.94 and 0.95: t = 0.005 / (0.00707 / sqrt 2) = 1 with 1 degree of freedom (Cauchy).
    assert "94         mean above 94.00%: t=1.00, one-sided p=0.25 (n=2)" in out.stdout


FAKE_REFERENCE = """\
import sys


def main(run, model):
    print("|  |  eval  |  0.9  |  0.9  |  0.9400  |  0.5  |")
    return 0.94


if __name__ == "__main__":
    model = None
    print("|  run  |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |")
    print("|  warmup  |  eval  |  0.1  |  0.1  |  0.1000  |  9.0  |")
    accs = [main(run, model) for run in range(200)]
"""


# Stands in for nvidia-smi on a CPU: a driver that knows the new name of the throttle reasons.
FAKE_NVIDIA_SMI = """\
#!/usr/bin/env bash
case "$*" in
  *-lms*) while true; do
            echo "$(date '+%Y/%m/%d %H:%M:%S.%3N'), 1980, 50, 300.0, 50, 0x0000000000000004"
            sleep 0.2
          done ;;
  *clocks_throttle_reasons*) exit 2 ;;
  *) echo fake ;;
esac
"""


def packed(path):
    """{name: bytes} of the files in a .tgz."""
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

TINY_FLAGS = ("--set train_images=400 --set test_images=200 --set batch_size=100 "
              "--set epochs=1 --set whiten_init_images=200")


def test_gpu_check_runs_every_stage_in_order_within_the_budget(cifar_dir, tmp_path):
    # On the CPU: accuracy runs over two processes; two fake references (run counts cut from
    # 200 to 3 and 2, the first then profiled); two variants, one from another tree of ours;
    # then a sweep that asks for far more runs than the budget allows and is stopped, keeping
    # its runs. A compile cache from an earlier check is restored and kept. (The stages before
    # the sweep take about 28 s on two idle cores; the budget stops the sweep at 50.)
    reference = tmp_path / "reference.py"
    reference.write_text(FAKE_REFERENCE)
    cache_in = tmp_path / "cache_in"
    cache_in.mkdir()
    with tarfile.open(cache_in / "compile-cache.tgz.0", "w:gz") as tar:
        info = tarfile.TarInfo("./inductor/kernel.py")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(FAKE_NVIDIA_SMI)
    (bin_dir / "nvidia-smi").chmod(0o755)
    base = tmp_path / "base"                   # another tree of ours, as an earlier commit's
    base.mkdir()
    shutil.copy(ROOT / "main.py", base)
    shutil.copytree(ROOT / "hlb", base / "hlb", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "OUT": str(out),
           "HLB_DATA_DIR": str(cifar_dir),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "BUDGET_S": "60",
           "RESERVE_S": "10", "OMP_NUM_THREADS": "1", "CACHE_IN": str(cache_in),
           "CACHE_DIR": str(tmp_path / "cache"), "REF_WORK": str(tmp_path / "ref"),
           "PLAN_CHECK": "0",                 # checked by the tests below; seconds counted here
           "ACCURACY": f"acc smoke 2 2 {TINY_FLAGS}",
           "REFERENCES": f"other {reference} 2",
           "VARIANTS": f"one smoke 1 {TINY_FLAGS}; base {base}:smoke 1 {TINY_FLAGS}",
           "SWEEP": f"grid 1000 --recipe smoke {TINY_FLAGS} --cell '--set bias_lr=0.03' "
                    "--cell '--set bias_lr=0.1 --set flip=random'"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "0", str(reference),
                             "3"], capture_output=True, text=True, env=env, timeout=250)
    summary = (out / "summary.txt").read_text()
    assert result.stdout.endswith(summary)                    # the table comes last
    assert "reference  n=3 " in summary and "other      n=2 " in summary   # profiles: no run
    assert "acc        n=2 " in summary and "time not reported (accuracy mode)" in summary
    assert "time ratio acc/" not in summary
    for name in ("one", "base"):
        assert f"{name:<10} n=1 " in summary
        assert f"time ratio {name}/reference" in summary and f"time ratio {name}/other" in summary
    assert "== reference profile" in result.stdout and "== other profile" not in result.stdout
    assert "TTA accuracy 0.9400" in result.stdout
    order = [line.split(":")[0] for line in result.stdout.splitlines()
             if line.startswith(("== accuracy", "== reference", "== ours", "== sweep"))
             and "profile" not in line]
    assert order == ["== accuracy", "== reference reference", "== reference other", "== ours",
                     "== ours", "== sweep grid"]
    # The clock samples, summarised by stage.
    assert "GPU clocks by stage" in summary
    assert any(line.startswith("one ") and "SM clock median 1980 MHz" in line
               and "slowdowns: software power cap 100%" in line
               for line in summary.splitlines())
    # What comes back from a device call: at most 8 files, no folders.
    assert sorted(p.name for p in out.iterdir()) == ["compile-cache.tgz.0", "logs.tgz",
                                                     "summary.txt"]
    assert "restored from" in result.stdout and "1 files at the start" in summary
    assert packed(out / "compile-cache.tgz.0") == {"./inductor/kernel.py": b"abc"}
    logs = packed(out / "logs.tgz")
    assert "TTA accuracy 0.9400" in logs["logs/reference-profile.txt"].decode()
    accuracy = json.loads(logs["logs/ours-acc.json"])
    assert accuracy["accuracy_only"] and accuracy["dist"]["world_size"] == 2
    grid = json.loads(logs["logs/sweep-grid.json"])
    assert grid["stopped"] == "interrupted" and 1 <= len(grid["runs"]) < 1000
    assert "sweep sweep-grid:" in summary and "bias_lr=0.1 flip=random" in summary
    assert result.returncode == 124                           # timeout(1): cut by the budget


def test_gpu_check_rejects_a_malformed_variant(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path), "VARIANTS": "x smoke"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "expected LABEL RECIPE RUNS" in result.stderr


def test_busy_time_is_the_union_of_kernel_spans_and_gaps_are_the_idle_rest():
    # Two overlapping kernels (0-10, 5-12), then idle until 20, a kernel 20-25, one inside it.
    busy, gaps = busy_and_gaps([(20, 25), (5, 12), (0, 10), (21, 22)])
    assert busy == 17 and gaps == [8]


def test_kernels_are_sorted_into_kinds_by_name():
    assert kind("sm90_xmma_fprop_implicit_gemm_f16f16") == "convolution and matmul"
    assert kind("triton_poi_fused_convolution_gelu_0") == (
        "compiled elementwise and reductions (Triton)")
    assert kind("triton_tem_fused_convolution_1") == "convolution and matmul (Triton templates)"
    assert kind("void at::native::multi_tensor_apply_kernel<FusedSgd>") == (
        "optimizer (multi-tensor)")
    assert kind("Memcpy HtoD (Pageable -> Device)") == "copies and fills"
    assert kind("some_kernel") == "other"


CLOCKS = """\
timestamp,clocks.sm,utilization.gpu,power.draw,temperature.gpu,clocks_event_reasons.active
2026/11/26 10:00:00.100, 1980, 0, 70.5, 40, 0x0000000000000001
2026/11/26 10:00:01.100, 1980, 100, 650.0, 60, 0x0000000000000000
2026/11/26 10:00:01.600, 1755, 100, [N/A], 71, 0x0000000000000004
not a sample
2026/11/26 10:00:02.100, 1980, 90, 500.0, 65, 0x0000000000000000
"""

STAGES = """\
2026/11/26 10:00:00.000 setup
2026/11/26 10:00:01.000 reference
2026/11/26 10:00:02.000 one
"""


def test_clock_summary_by_stage_names_the_slowdowns(tmp_path):
    (tmp_path / "clocks.csv").write_text(CLOCKS)
    (tmp_path / "stages.txt").write_text(STAGES)
    lines = clock_lines(clock_samples(tmp_path / "clocks.csv"),
                        stage_starts(tmp_path / "stages.txt"))
    assert len(lines) == 3
    assert lines[0].startswith("setup") and "slowdowns: none" in lines[0]   # idle is no slowdown
    assert lines[1].startswith("reference") and "2 samples" in lines[1]
    assert "median 1868 MHz (min 1755, max 1980)" in lines[1]
    assert "software power cap 50%" in lines[1] and "power max 650 W" in lines[1]
    assert lines[2].startswith("one") and "1 samples" in lines[2]


def test_flops_counts_the_trimmed_network_and_selective_tta():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "flops.py"), "94"],
                         capture_output=True, text=True, check=True)
    assert "forward 0.211 GFLOP per image" in out.stdout
    # A plain pass, then 5 more views of 2500 images in 7 padded chunks of 2000: 2.4 forwards.
    assert "TTA       2.4 forwards per image" in out.stdout


def test_memory_prints_the_terms_and_the_estimates_total():
    from hlb.bench.memory import estimate
    from hlb.recipes import RECIPES

    script = str(ROOT / "scripts" / "memory.py")
    out = subprocess.run([sys.executable, script, "94", "batch_size=1000"],
                         capture_output=True, text=True, check=True).stdout
    expected = estimate(dataclasses.replace(RECIPES["94"], batch_size=1000)).reserved_mib
    assert f"peak reserved {expected:.0f} MiB" in out
    assert "reflect-padded training copy" in out and "augment: " in out
    bad = subprocess.run([sys.executable, script, "94", "batch_size=x"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --set batch_size=x")


def test_gpu_report_gives_the_busy_share_gaps_and_kinds():
    from types import SimpleNamespace

    import torch
    from profile_run import gpu_lines

    def event(name, start, end, device=torch.autograd.DeviceType.CUDA, annotation=False):
        span = SimpleNamespace(start=start, end=end, elapsed_us=lambda: end - start)
        return SimpleNamespace(name=name, device_type=device, time_range=span,
                               is_user_annotation=annotation)

    cpu = torch.autograd.DeviceType.CPU
    events = [event("cudaGraphLaunch", 0, 5, cpu), event("sm90_xmma_fprop", 0, 300),
              event("triton_poi_fused_gelu_0", 350, 450), event("memset", 2450, 2550),
              # an annotation over all of it is no kernel: it would fill the gaps
              event("Optimizer.step#Muon.step", 0, 2550, annotation=True)]
    prof = SimpleNamespace(events=lambda: events)
    lines = gpu_lines(prof, wall=0.005, steps=2)               # 5 ms of wall time
    assert lines[0] == "kernels: 3 (2 per training step); CUDA graph launches: 1"
    assert "GPU busy 0.001 s = 10% of the wall time, 20% of the span" in lines[1]
    assert "10-100 us: 1 gaps, 0.1 ms" in lines[2] and "1000-inf us: 1 gaps, 2.0 ms" in lines[2]
    assert lines[3].startswith("kernel time by kind (by name): "
                               "convolution and matmul 0.3 ms (60%)")


def test_trace_steps_prints_each_step_and_stops_at_the_first_value_that_is_not_finite():
    from conftest import synthetic_cifar
    from trace_steps import main as trace_main
    from trace_steps import trace

    from trace_steps import traced

    from hlb.bench.overrides import override
    from hlb.recipes import RECIPES

    recipe = override(RECIPES["94"], ["train_images=256", "test_images=64", "batch_size=64",
                                      "widths=8,16,16", "whiten_init_images=128"])
    lines = []
    assert trace(traced(recipe, synthetic_cifar(), "cpu"), steps=6, out=lines.append) == (None, 6)
    assert [line.split()[1] for line in lines] == ["1", "2", "3", "4", "5", "6"]  # 2 epochs
    assert all("max |out|" in line and "max |grad|" in line and "max |weight|" in line
               and "not finite" not in line for line in lines)

    # A head whose output overflows: the first step names the loss and the head's output.
    run = traced(recipe, synthetic_cifar(), "cpu")
    run.net.head.register_forward_hook(lambda module, inputs, output: output * float("inf"))
    lines = []
    assert trace(run, steps=6, out=lines.append) == (1, 1)
    assert "not finite: loss, out head" in lines[0]

    assert trace_main(["--steps", "0"]) == 2


def plan(check, tmp_path, **env):
    """scripts/next_check.sh CHECK with PLAN_ONLY=1: its stages, every command line of ours
    checked, nothing run; the references are empty stand-ins in a folder of their own."""
    ref = tmp_path / "ref"
    (ref / "base").mkdir(parents=True, exist_ok=True)
    for name in ("airbench94_muon.py", "cifar10_speedrun.py", "base/main.py"):
        (ref / name).touch()
    env = {**os.environ, "PYTHON": sys.executable, "PLAN_ONLY": "1", "REF_DIR": str(ref),
           "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "next_check.sh"), check],
                          capture_output=True, text=True, env=env, timeout=120)


NEXT_CHECKS = {
    "A1": ["stages, in order: accuracy variants references", "accuracy: claim 94 200 4",
           "variants: default 94 15;base ", "base:94muon 15 --set capture_step=true",
           "references: airbench "],
    "A2": ["stages, in order: variants references",
           "variants: default 94 15;t4like 94 15 --set compile=false",
           "references: hiverge ", "cifar10_speedrun.py 10;airbench "],
    "C": ["sweep: levers 16 --recipe 94 --prune --cell '--set activation=silu'",
          "--cell '--recipe 94tuned'"],
    "T": ["tune: search 4 --recipe 94 --space muon_lr=", "--space image_sizes=32/24,24,28,28,32",
          "--runs 4 --trials 40 --confirm 3 --confirm-runs 8"],
    "D": ["stages, in order: variants dist cap profile", "variants: default 94 5;r95 95 10;r96",
          "dist: torchrun 94 5 1", "cap: 3; profile: default"],
    "E": ["variants: default 94 15;autotune 94 15 --set compile_mode=max-autotune"],
}


@pytest.mark.parametrize("check", sorted(NEXT_CHECKS))
def test_each_next_check_plans_its_stages_and_every_command_line_of_ours_builds(check, tmp_path):
    result = plan(check, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "each parses and builds" in result.stdout and "budget: 540 s" in result.stdout
    for text in NEXT_CHECKS[check]:
        assert text in result.stdout
    assert not (tmp_path / "out" / "summary.txt").exists()          # nothing ran


def test_a_bad_command_line_stops_the_check_before_any_stage(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "OUT": str(tmp_path),
           "VARIANTS": "default 94 15; typo 94 15 --set activaton=silu"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "typo" not in result.stdout and "== ours" not in result.stdout
    assert result.stderr.startswith("error: a stage's command line is bad: '--recipe 94 --set "
                                    "activaton=silu'") and len(result.stderr.splitlines()) == 1
    assert plan("B", tmp_path).stderr.startswith("usage: scripts/next_check.sh A1|A2|C|T|D|E")
    missing = plan("A2", tmp_path, REF_DIR=str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "cifar10_speedrun.py is missing" not in missing.stderr
    assert "airbench94_muon.py is missing; BENCHMARKS.md" in missing.stderr


def test_gpu_check_runs_the_stages_in_order_with_a_search_and_torchrun(cifar_dir, tmp_path):
    # ORDER puts the search first: two workers share one study (its SQLite file comes back
    # in logs.tgz), then a timed run under torchrun; the summary gives both.
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "OUT": str(out),
           "HLB_DATA_DIR": str(cifar_dir), "BUDGET_S": "400", "RESERVE_S": "10",
           "OMP_NUM_THREADS": "1", "CACHE_IN": str(tmp_path / "none"),
           "CACHE_DIR": str(tmp_path / "cache"), "TUNE_DIR": str(tmp_path / "tune"),
           "ORDER": "tune dist", "DIST": f"tr smoke 1 1 {TINY_FLAGS}",
           "TUNE": f"s 2 --recipe smoke {TINY_FLAGS.replace('--set epochs=1 ', '')} "
                   "--space label_smoothing=0.05:0.3 --space epochs=1:2 --runs 1 --trials 2"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "0"],
                            capture_output=True, text=True, env=env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:]
    stages = [line.split(":")[0] for line in result.stdout.splitlines()
              if line.startswith(("== tune", "== ours"))]
    assert stages == ["== tune s", "== ours under torchrun"]
    summary = (out / "summary.txt").read_text()
    assert "tune smoke-accuracy: objective accuracy, 2 trials (2 complete)" in summary
    assert summary.count("  trial ") == 2 and "label_smoothing=" in summary
    assert "tr         n=1 " in summary
    logs = packed(out / "logs.tgz")
    assert "logs/tune-s.db" in logs and "logs/tune-s.json" in logs
    assert json.loads(logs["logs/ours-tr.json"])["dist"]["world_size"] == 1


def test_keep_results_files_a_check_as_the_runs_folder_does(tmp_path):
    from hlb.bench.records import list_records
    from keep_results import main as keep_main

    record = (ROOT / "results" / "2026-12-04-h200" / "cgc" / "record.json").read_bytes()
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "ours-cgc.json").write_bytes(record)
    (out / "logs" / "ours-broken.json").write_text("{not json")
    (out / "logs" / "stages.txt").write_text("2026/12/04 02:07:31.907 setup\n")
    (out / "logs" / "huge.log").write_text("x" * 300_000)
    with tarfile.open(out / "logs.tgz", "w:gz") as tar:
        tar.add(out / "logs", arcname="logs")
    shutil.rmtree(out / "logs")
    (out / "summary.txt").write_text("== summary\n")
    (out / "compile-cache.tgz.0").write_bytes(b"cache")
    dest = tmp_path / "results" / "2026-12-04-h200"
    assert keep_main([str(out), str(dest)]) == 0
    kept = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert kept == ["cgc/record.json", "logs/stages.txt", "summary.txt"]
    rows = list_records(dest)
    assert [(r["recipe"], r["n"], r["error"]) for r in rows] == [("94muon", 37, None)]
    assert keep_main([str(out), str(dest)]) == 2                  # not empty: nothing overwritten
    assert keep_main([str(tmp_path / "results"), str(tmp_path / "new")]) == 2    # no record
