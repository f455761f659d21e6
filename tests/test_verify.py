"""`hlb verify` and `hlb board`: a claim checked whole, run again beside a baseline and judged;
verification records ranked, the broken ones listed apart."""

import copy
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hlb.bench.runs
from conftest import synthetic_cifar
from hlb.bench.cli import main
from hlb.bench.records import runs_of
from hlb.bench.report import jsonable
from hlb.bench.stats import summarize
from hlb.bench.verify import FORMAT, default_baseline, judge
from hlb.recipes import RECIPES
from hlb.train import PreparedRun, RunResult

ROOT = Path(__file__).resolve().parents[1]
# Learns the synthetic classes well past the smoke recipe's 50% target in about a second.
TINY = ["--recipe", "smoke", "--device", "cpu", "--set", "train_images=512",
        "--set", "test_images=256", "--set", "batch_size=64", "--set", "epochs=3",
        "--set", "widths=16,32,32", "--set", "whiten_init_images=256",
        "--set", "eval_batch_size=256"]
BASELINE = " ".join(TINY[:2] + TINY[4:]) + " --set bias_lr=0.03"


@pytest.fixture
def synthetic_data(monkeypatch):
    """main.py in this process, on learnable synthetic data instead of CIFAR-10."""
    data = synthetic_cifar(512, 256)
    monkeypatch.setattr(hlb.bench.runs, "load_cifar10", lambda *args, **kwargs: data)


def _one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def made_claim(tmp_path_factory):
    """A real record of 3 runs, made once for the module's tests."""
    path = tmp_path_factory.mktemp("claim") / "claim.json"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HLB_RUNS_DIR", str(path.parent / "runs"))
        patch.setattr(hlb.bench.runs, "load_cifar10",
                      lambda *args, **kwargs: synthetic_cifar(512, 256))
        assert main([*TINY, "--runs", "3", "--no-save", "--json", str(path)]) == 0
    return path.read_bytes()


@pytest.fixture
def claim(made_claim, synthetic_data, tmp_path, capsys):
    """That record, copied for one test to read or edit (its path)."""
    path = tmp_path / "claim.json"
    path.write_bytes(made_claim)
    capsys.readouterr()
    return path


def forged(path, change):
    """The record at `path` with its runs changed by `change(run)`, the summary recomputed so
    that the numbers add up: a consistent claim the code never made."""
    data = json.loads(path.read_text())
    for run in data["runs"]:
        change(run)
    data["summary"] = jsonable(dataclasses.asdict(summarize(runs_of(data, "x"))))
    path.write_text(json.dumps(data))
    return data


def test_a_real_record_verifies(claim, tmp_path, capsys, runs_dir):
    out = tmp_path / "v.json"
    assert main(["verify", str(claim), "--baseline", BASELINE, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "the claim's seeds 0..2" in text and "verdict: verified" in text
    assert "Welch p=1" in text            # the CPU reruns give the claim's numbers exactly
    data = json.loads(out.read_text())
    assert data["format"] == FORMAT and data["result"]["verdict"] == "verified"
    assert data["claim"]["sha256"] and data["claim"]["n"] == 3
    assert [r["tta_acc"] for r in data["entry"]["runs"]] == [
        r["tta_acc"] for r in json.loads(claim.read_text())["runs"]]
    assert data["result"]["time"]["claimed_ratio"] is None       # a plain record claims none
    assert len(list(runs_dir.glob("*verify-smoke*/record.json"))) == 1
    capsys.readouterr()
    assert main(["runs"]) == 0 and "verify smoke" in capsys.readouterr().out


def test_a_record_with_one_accuracy_edited_is_refused_before_any_run(claim, tmp_path, capsys,
                                                                     monkeypatch, runs_dir):
    data = json.loads(claim.read_text())
    data["runs"][1]["tta_acc"] += 0.01
    claim.write_text(json.dumps(data))
    before = claim.read_bytes()
    monkeypatch.setattr(PreparedRun, "run", lambda *a, **k: pytest.fail("ran"))
    out = tmp_path / "v.json"
    assert main(["verify", str(claim), "--json", str(out)]) == 1
    assert "its summary does not add up: acc_mean" in _one_line(capsys)
    assert claim.read_bytes() == before and not out.exists() and not list(runs_dir.iterdir())


def test_a_claim_far_above_what_the_code_reaches_is_not_reproduced(claim, tmp_path, capsys):
    forged(claim, lambda run: run.update(tta_acc=0.99 - run["seed"] / 1000))
    assert main(["verify", str(claim), "--baseline", BASELINE, "--no-save"]) == 1
    text = capsys.readouterr().out
    assert "verdict: not reproduced" in text
    assert "is not the claimed 98.90% (n=3): Welch p=" in text


def test_a_claim_on_other_data_is_refused_before_any_run(claim, capsys, monkeypatch):
    data = json.loads(claim.read_text())
    data["data_fingerprint"] = "0123456789abcdef"
    claim.write_text(json.dumps(data))
    monkeypatch.setattr(PreparedRun, "run", lambda *a, **k: pytest.fail("ran"))
    assert main(["verify", str(claim), "--no-save"]) == 2
    assert "the data differs: the claim ran on fingerprint 0123456789abcdef" in _one_line(capsys)


@pytest.mark.parametrize("text, message", [
    ('{"runs": [', "is not JSON"),
    ("[1, 2]", "is not an hlb record (not a JSON object)"),
    ('{"format": "hlb-cifar10 sweep v1", "runs": []}', "is a sweep record"),
    ("[" * 50_000 + "]" * 50_000, "is not a record (RecursionError"),
    ('{"runs": [], "summary": {}}', "is missing or not a dict"),
])
def test_a_file_that_is_not_a_claim_is_one_line(tmp_path, capsys, text, message):
    path = tmp_path / "claim.json"
    path.write_text(text)
    assert main(["verify", str(path)]) == 1
    assert message in _one_line(capsys)
    assert path.read_text() == text


def test_missing_files_and_folders_are_one_line(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "none.json")]) == 1
    assert "no record at" in _one_line(capsys)
    assert main(["verify", str(tmp_path / "none.json"), "--runs", "1"]) == 1   # read first
    capsys.readouterr()
    assert main(["board", str(tmp_path / "nowhere")]) == 2
    assert "no such folder or file" in _one_line(capsys)
    assert main(["board", str(tmp_path)]) == 0                     # an empty folder: no entry
    assert "no verified entry yet" in capsys.readouterr().out


def test_the_time_ratio_is_judged_against_the_claim_on_the_same_kind_of_device():
    def runs(times):
        return [RunResult(run=i, seed=i, tta_acc=0.95 + i / 1000, train_time_s=t)
                for i, t in enumerate(times)]
    entry, base = runs([1.00, 1.02, 0.98, 1.01]), runs([2.0, 2.0, 2.0, 2.0])   # about 0.5
    claim = {"n": 4, "acc_mean": 0.9515, "acc_std": 0.0013, "device": "cuda"}
    for claimed, reasons in ((0.51, 0), (0.9, 0), (0.3, 1)):
        result = judge({**claim, "time_ratio": claimed}, 0.94, entry, base, "cuda")
        why = [r for r in result["reasons"] if "time ratio" in r]
        assert result["time"]["judged"] and len(why) == reasons, (claimed, why)
    assert "the claimed time ratio 0.300 lies below the measured 0.501" in why[0]
    other = judge({**claim, "time_ratio": 0.3}, 0.94, entry, base, "cpu")
    assert not other["time"]["judged"] and other["verdict"] == "verified"


def git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                   check=True, capture_output=True)


def test_a_record_of_uncommitted_edits_needs_the_same_edits(tmp_path, cifar_dir):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "main.py", repo)
    shutil.copytree(ROOT / "hlb", repo / "hlb", ignore=shutil.ignore_patterns("__pycache__"))
    git("init", "-q", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "start", cwd=repo)
    with open(repo / "hlb" / "model.py", "a") as f:
        f.write("# an uncommitted edit\n")
    tiny = ["--recipe", "smoke", "--device", "cpu", "--data-dir", str(cifar_dir), "--no-save",
            "--set", "train_images=500", "--set", "test_images=200", "--set", "epochs=1",
            "--set", "widths=8,16,16", "--set", "whiten_init_images=200"]

    def hlb(*args):
        return subprocess.run([sys.executable, "main.py", *args], cwd=repo, text=True,
                              capture_output=True, timeout=300)

    made = hlb(*tiny, "--runs", "2", "--json", str(tmp_path / "claim.json"))
    assert made.returncode == 0, made.stderr
    code = json.loads((tmp_path / "claim.json").read_text())["environment"]["code"]
    assert code["dirty"] and "+# an uncommitted edit" in code["diff"]
    git("stash", "-q", cwd=repo)                                     # the clean commit
    refused = hlb("verify", str(tmp_path / "claim.json"), "--device", "cpu", "--no-save",
                  "--data-dir", str(cifar_dir))
    assert refused.returncode == 2 and "the code differs" in refused.stderr
    assert "with uncommitted edits" in refused.stderr and len(refused.stderr.splitlines()) == 1
    git("stash", "pop", "-q", cwd=repo)                              # the same edits again
    baseline = " ".join(tiny[:2] + tiny[7:])
    accepted = hlb("verify", str(tmp_path / "claim.json"), "--device", "cpu", "--no-save",
                   "--data-dir", str(cifar_dir), "--baseline", baseline)
    assert accepted.returncode in (0, 1) and "verdict: " in accepted.stdout, accepted.stderr
    assert "the code differs" not in accepted.stderr


# The board, from verification records made quickly: runs replaced by planted results.

@pytest.fixture
def planted(synthetic_data, monkeypatch):
    """Each run answers at once: accuracy 0.9 + seed/1000, and seconds that grow with bias_lr."""
    def run(self, seed, run=0, on_epoch=None, **kwargs):
        lr = self.recipe.bias_lr
        return RunResult(run=run, seed=seed, tta_acc=0.9 + seed / 1000 - lr / 1e4,
                         val_acc=0.9, train_time_s=lr * (1 + seed / 100))
    monkeypatch.setattr(PreparedRun, "run", run)


def verified(tmp_path, lr, name):
    """A claim of recipe smoke at bias_lr `lr` and its verification against bias_lr=8 (ratio
    lr/8; the values only feed the planted runs)."""
    claim, out = tmp_path / f"{name}-claim.json", tmp_path / f"{name}.json"
    sets = " ".join(TINY[4:]) + " --set bias_lr=8"
    assert main(["compare", *TINY[:4], "--runs", "4", "--no-save", "--json", str(claim),
                 "--a", sets, "--b", f"{sets} --set bias_lr={lr}"]) == 0
    assert main(["verify", str(claim), "--no-save", "--json", str(out)]) == 0
    return out


def test_board_ranks_verified_entries_and_lists_a_broken_one_apart(planted, tmp_path, capsys):
    board = tmp_path / "board"
    board.mkdir()
    for lr, name in ((12, "slow"), (4, "fast"), (6, "middle")):
        shutil.copy(verified(tmp_path, lr, name), board / f"{name}.json")
    text = (board / "middle.json").read_text()
    (board / "cut.json").write_text(text[: len(text) // 2])
    edited = json.loads(text)
    edited["result"]["time"]["ratio"] = 0.1                        # a better ratio, by hand
    (board / "edited.json").write_text(json.dumps(edited))
    shutil.copy(tmp_path / "fast-claim.json", board / "a-compare-record.json")
    capsys.readouterr()
    assert main(["board", str(board), "--plot", str(tmp_path / "board.png")]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "recipe smoke" in line]
    assert [r.split(" | ")[0] for r in rows[:3]] == ["| 1", "| 2", "| 3"]
    assert "bias_lr=4" in rows[0] and "bias_lr=6" in rows[1] and "bias_lr=12" in rows[2]
    assert "| 0.500 (0.500 to 0.500) |" in rows[0]                  # 4/8, run by run
    assert "| --recipe smoke --set train_images=512" in rows[0]        # arm a, the baseline
    apart = out.split("Not ranked:")[1]
    assert "cut.json" in apart and "is not JSON" in apart
    assert "edited.json" in apart and "does not follow from its claim and its runs" in apart
    assert "1 other record(s) passed over" in out
    assert (tmp_path / "board.png").stat().st_size > 10_000


def test_a_verification_is_itself_a_claim_that_verifies_again(planted, tmp_path, capsys):
    first = verified(tmp_path, 4, "fast")
    again = tmp_path / "again.json"
    assert main(["verify", str(first), "--no-save", "--json", str(again)]) == 0
    data = json.loads(again.read_text())
    assert data["claim"]["time_ratio"] == pytest.approx(0.5)
    assert data["result"]["time"]["judged"] and data["result"]["verdict"] == "verified"


def test_an_interrupted_verification_resumes(planted, tmp_path, capsys, monkeypatch):
    claim = tmp_path / "claim.json"
    assert main([*TINY, "--runs", "4", "--no-save", "--json", str(claim)]) == 0
    whole, out = tmp_path / "whole.json", tmp_path / "v.json"
    flags = ["verify", str(claim), "--baseline", BASELINE, "--no-save"]
    assert main([*flags, "--json", str(whole)]) == 0
    real, asked, hit = PreparedRun.run, [], []

    def stop_at_2(self, seed, run=0, **kwargs):
        asked.append(run)
        if run == 2 and not hit:
            hit.append(run)
            raise KeyboardInterrupt
        return real(self, seed, run=run, **kwargs)

    monkeypatch.setattr(PreparedRun, "run", stop_at_2)
    assert main([*flags, "--json", str(out)]) == 130
    asked.clear()
    assert main([*flags, "--resume", str(out)]) == 0
    assert sorted(asked) == [2, 2, 3, 3]                  # only the runs it lacked
    done, expected = json.loads(out.read_text()), json.loads(whole.read_text())
    assert done["result"] == expected["result"] and done["entry"]["stopped"] is None
    other = copy.deepcopy(done)
    other["claim"]["sha256"] = "0" * 64
    out.write_text(json.dumps(other))
    capsys.readouterr()
    assert main([*flags, "--resume", str(out)]) == 2
    assert "it verified another claim" in _one_line(capsys)


def test_a_default_baseline_that_makes_no_sense_on_a_cpu_is_replaced_in_one_line():
    smoke = RECIPES["smoke"]
    flags, why = default_baseline(None, smoke, "cpu")
    assert flags == "--recipe smoke"
    assert "times the entry's work" in why and "--baseline" in why and "\n" not in why
    assert default_baseline(None, smoke, "cuda") == ("--recipe 94", None)
    assert default_baseline("--recipe 94sgd", smoke, "cpu") == ("--recipe 94sgd", None)
    # An entry of about 94's work keeps recipe 94 on a CPU too (its estimate says how long).
    assert default_baseline(None, RECIPES["94sgd"], "cpu") == ("--recipe 94", None)
