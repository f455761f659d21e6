"""What each card runs (hlb.execution), decided from what the device reports: the cards are
not here, so `device_facts`, the one function that asks torch about the device, is replaced
by the facts each card would report, and the real one is checked against faked torch queries.
"""

import json
import types

import pytest
import torch

import hlb.bench.runs
import hlb.execution
from conftest import synthetic_cifar
from hlb.bench.cli import main
from hlb.bench.overrides import override
from hlb.bench.runs import by_rank, resolve_device
from hlb.errors import HlbError, UsageError
from hlb.execution import DeviceFacts, device_facts, execution, has_kernels, missing_kernels
from hlb.recipes import RECIPES
from hlb.train import Stopwatch

R94 = RECIPES["94"]
# torch.cuda.get_arch_list() of torch 2.11+'s cu130 wheel, and of its cu126 wheel.
CU130 = ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120")
CU126 = ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90")
CARDS = {(6, 0): "Tesla P100", (7, 0): "Tesla V100", (7, 5): "Tesla T4",
         (8, 0): "A100", (8, 6): "RTX 3090", (8, 9): "RTX 4090", (9, 0): "H100",
         (12, 0): "RTX 5090"}
TINY = ["--recipe", "smoke", "--set", "train_images=400", "--set", "test_images=200",
        "--set", "batch_size=100", "--set", "epochs=1", "--set", "whiten_init_images=200"]


def nvidia(capability, triton=True, kernels=CU126 + ("sm_100", "sm_120")):
    return DeviceFacts("cuda", capability, None, triton, kernels, CARDS.get(capability, "GPU"))


@pytest.fixture
def card(monkeypatch):
    """`card(facts)`: from now on every device query answers `facts` (the CPU stays a CPU),
    and torch sees one CUDA GPU."""
    def use(facts):
        monkeypatch.setattr(hlb.execution, "device_facts",
                            lambda device: facts if "cuda" in str(device) else DeviceFacts(
                                torch.device(device).type))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (80 << 30, 80 << 30))
    return use


# (compute capability) -> (compile, Newton-Schulz dtype, bf16 allowed)
EXPECTED = {(6, 0): (False, torch.float32, False), (7, 0): (True, torch.float16, False),
            (7, 5): (True, torch.float16, False), (8, 0): (True, torch.bfloat16, True),
            (8, 6): (True, torch.bfloat16, True), (8, 9): (True, torch.bfloat16, True),
            (9, 0): (True, torch.bfloat16, True), (12, 0): (True, torch.bfloat16, True)}


@pytest.mark.parametrize("capability", list(EXPECTED), ids=lambda c: f"sm_{c[0]}{c[1]}")
def test_each_compute_capability_gets_what_the_card_supports(capability, card):
    compiles, orthogonalize, bf16 = EXPECTED[capability]
    card(nvidia(capability))
    how = execution(R94, "cuda")
    assert how.cuda and how.warmup and not how.check_each_step
    assert how.dtype == torch.float16 and how.memory_format == torch.channels_last
    assert how.compile == compiles and how.capture            # capture kept on every card
    assert how.orthogonalize_dtype == orthogonalize
    name = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[orthogonalize]
    assert how.notes[0] == (f"sm_{capability[0]}{capability[1]} ({CARDS[capability]}): fp16, "
                            f"{'compiled' if compiles else 'not compiled'}, captured step, "
                            f"Newton-Schulz in {name}")
    assert all("\n" not in note for note in how.notes)
    if orthogonalize != torch.bfloat16:
        assert any(note.startswith(f"Newton-Schulz in {name}") for note in how.notes[1:])
    if not compiles:
        assert "compile off: Triton compiles for sm_70 and newer; the captured step is kept" \
            in how.notes
    bf16 = override(R94, ["precision=bf16"])
    if EXPECTED[capability][2]:
        assert execution(bf16, "cuda").dtype == torch.bfloat16
    else:
        with pytest.raises(UsageError, match=r"precision=bf16: sm_\d+ .* has no native bf16"):
            execution(bf16, "cuda")
    assert execution(override(R94, ["precision=fp32"]), "cuda").dtype == torch.float32


def test_without_triton_compile_is_off_with_a_note_and_the_capture_stays(card):
    card(nvidia((8, 6), triton=False))        # native Windows: no Triton
    how = execution(R94, "cuda:1")
    assert not how.compile and how.capture and how.device == "cuda:1"
    assert how.orthogonalize_dtype == torch.bfloat16
    assert any(note.startswith("compile off: Triton is not installed") for note in how.notes)
    assert execution(R94, "cuda").chosen() == {
        "dtype": "fp16", "compile": False, "capture": True, "orthogonalize_dtype": "bf16",
        "notes": list(how.notes)}


@pytest.mark.parametrize("arch, native", [("gfx942", True), ("gfx90a", True),
                                          ("gfx1100", True), ("gfx1030", False),
                                          ("gfx906", False)])
def test_rocm_takes_bf16_where_its_architecture_has_it_and_runs_no_captured_step(arch, native,
                                                                                card):
    card(DeviceFacts("cuda", (9, 4), arch, True, (arch,), "AMD GPU"))
    how = execution(R94, "cuda")
    assert how.compile and not how.capture
    assert any(note.startswith("captured step off on ROCm") for note in how.notes)
    assert how.notes[0].startswith(f"ROCm {arch} (AMD GPU): fp16, compiled, eager step")
    assert how.orthogonalize_dtype == (torch.bfloat16 if native else torch.float16)
    bf16 = override(R94, ["precision=bf16"])
    if native:
        assert execution(bf16, "cuda").dtype == torch.bfloat16
    else:
        with pytest.raises(UsageError, match="no native bf16"):
            execution(bf16, "cuda")
    assert missing_kernels("cuda") is None         # ROCm's builds are not checked


def test_the_cpu_and_mps_run_the_same_fp32_math_eagerly():
    cpu, mps = execution(R94, "cpu"), execution(R94, "mps")
    for how in (cpu, mps):
        assert how.dtype == how.orthogonalize_dtype == torch.float32 and not how.cuda
        assert not (how.compile or how.capture)
        assert how.memory_format == torch.contiguous_format
    assert cpu.check_each_step and not cpu.warmup and cpu.kind == "cpu"
    # MPS: a warm-up (Metal's kernels are built on first use) and a read per epoch (a read
    # waits for the device), as on a GPU.
    assert mps.warmup and not mps.check_each_step and mps.kind == "mps"
    assert mps.notes[0].startswith("mps: fp32, eager") and cpu.notes[0].startswith("cpu:")


def test_device_facts_reads_the_card_from_torch(monkeypatch):
    props = types.SimpleNamespace(major=7, minor=5, name="Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(CU130))
    monkeypatch.setattr(hlb.execution, "_triton_imports", lambda: False)
    monkeypatch.setattr(torch.version, "hip", None)
    assert device_facts("cuda:0") == DeviceFacts("cuda", (7, 5), None, False, CU130, "Tesla T4")
    assert not device_facts("cuda").bf16_native and str(device_facts("cuda")) == \
        "sm_75 (Tesla T4)"
    props.gcnArchName, props.major, props.minor = "gfx90a:sramecc+:xnack-", 9, 0
    monkeypatch.setattr(torch.version, "hip", "6.2.4")
    rocm = device_facts("cuda")
    assert rocm.hip_arch == "gfx90a" and rocm.rocm and rocm.bf16_native
    assert device_facts("cpu") == DeviceFacts("cpu") and device_facts("mps").kind == "mps"


def test_which_builds_have_kernels_for_which_cards():
    assert has_kernels((8, 9), CU130)             # sm_86's binary runs on later 8.x
    assert has_kernels((10, 3), CU130) and has_kernels((12, 1), CU130)
    assert not has_kernels((7, 0), CU130) and not has_kernels((6, 1), CU130)
    assert has_kernels((6, 1), CU126) and has_kernels((7, 0), CU126)
    assert not has_kernels((12, 0), CU126) and not has_kernels((3, 7), CU126)
    assert has_kernels((12, 0), CU126 + ("compute_90",))   # PTX, compiled for a later card
    assert not has_kernels((8, 6), ("compute_90",))
    assert has_kernels((9, 0), ("sm_90a",)) and not has_kernels((9, 1), ("sm_90a",))


@pytest.mark.parametrize("capability, kernels, wheel", [
    ((7, 0), CU130, "cu126"), ((6, 1), CU130, "cu126"), ((12, 0), CU126, "cu130")])
def test_a_card_the_installed_torch_has_no_kernels_for_stops_before_any_data(
        capability, kernels, wheel, card, tmp_path, capsys):
    card(nvidia(capability, kernels=kernels))
    never = tmp_path / "never"
    assert main([*TINY, "--device", "cuda", "--data-dir", str(never), "--no-save"]) == 1
    out, err = capsys.readouterr()
    line, = err.strip().splitlines()
    assert f"has no kernels for this GPU, sm_{capability[0]}{capability[1]} (" in line
    assert f"https://download.pytorch.org/whl/{wheel}" in line and "--device cpu" in line
    assert out == "" and not never.exists()
    with pytest.raises(HlbError, match="no kernels"):
        resolve_device(None)                         # the default device is checked too


def test_bf16_before_sm_80_is_refused_in_one_line_before_any_data(card, tmp_path, capsys):
    card(nvidia((7, 5)))
    never = tmp_path / "never"
    status = main([*TINY, "--device", "cuda", "--set", "precision=bf16",
                   "--data-dir", str(never), "--no-save"])
    line, = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and "precision=bf16: sm_75 (Tesla T4) has no native bf16" in line
    assert "--set precision=fp16" in line and not never.exists()


def test_the_banner_says_what_the_card_runs_and_why(card, monkeypatch, capsys):
    card(nvidia((7, 5), triton=False))
    stop = HlbError("no data here")

    def no_data(*args, **kwargs):
        raise stop

    monkeypatch.setattr(hlb.bench.runs, "load_cifar10", no_data)   # stop after the banner
    gpu_settings = ["--set", "compile=true", "--set", "capture_step=true"]
    assert main([*TINY, *gpu_settings, "--device", "cuda", "--no-save"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("hlb-cifar10: recipe smoke, 1 run(s) on cuda")
    assert out[1] == "  sm_75 (Tesla T4): fp16, not compiled, captured step, " \
                     "Newton-Schulz in fp16"
    assert out[2].startswith("  compile off: Triton is not installed")
    assert out[3].startswith("  Newton-Schulz in fp16, not bf16")


def test_the_record_keeps_what_ran_and_why(monkeypatch, tmp_path, capsys):
    data = synthetic_cifar(512, 256)
    monkeypatch.setattr(hlb.bench.runs, "load_cifar10", lambda *args, **kwargs: data)
    out = tmp_path / "r.json"
    assert main([*TINY, "--device", "cpu", "--json", str(out), "--no-save"]) == 0
    record = json.loads(out.read_text())
    assert record["execution"] == {"dtype": "fp32", "compile": False, "capture": False,
                                   "orthogonalize_dtype": "fp32",
                                   "notes": [execution(RECIPES["smoke"], "cpu").notes[0]]}
    assert f"  {record['execution']['notes'][0]}" in capsys.readouterr().out.splitlines()


def test_mps_is_the_default_where_it_is_the_only_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device(None) == "cpu"
    with pytest.raises(UsageError, match="--device mps: torch sees no Apple GPU"):
        resolve_device("mps")
    with pytest.raises(UsageError, match="choose cuda, mps or cpu"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device(None) == resolve_device("mps") == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert resolve_device(None) == "cuda"


def test_mps_time_waits_for_the_device_at_each_start_and_stop(monkeypatch):
    waits = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: waits.append("sync"))
    watch = Stopwatch("mps")
    watch.start()
    assert waits == ["sync"]
    watch.stop()
    assert waits == ["sync", "sync"] and watch.seconds > 0
    cpu = Stopwatch("cpu")
    cpu.start()
    cpu.stop()
    assert len(waits) == 2 and cpu.seconds > 0


def test_each_ranks_fallback_note_is_named_by_its_rank():
    assert by_rank([None]) == [] and by_rank(["compile failed"]) == ["compile failed"]
    assert by_rank(["a", None, "a", "b"]) == ["ranks 0, 2: a", "rank 3: b"]
