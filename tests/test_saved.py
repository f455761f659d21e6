"""Saved networks (hlb/bench/saved.py): `--save-model`, `eval`, `hlb.load`, and files we refuse."""

import errno
import json
import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import hlb
from hlb.augment import normalize
from hlb.bench.cli import main
from hlb.bench.overrides import override
from hlb.bench.saved import (FORMAT, load_saved, read_safetensors, save, save_model,
                             write_safetensors)
from hlb.errors import HlbError
from hlb.evaluate import plain_evaluation, tta_accuracy
from hlb.execution import execution
from hlb.model import build_net
from hlb.recipes import get_recipe

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train_images=600", "test_images=300", "batch_size=100", "epochs=1",
        "whiten_init_images=300"]


def run_main(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def trained(cifar_dir, tmp_path_factory):
    """One tiny run on the real data through the command line, its model and record kept."""
    folder = tmp_path_factory.mktemp("saved")
    sets = [a for s in TINY for a in ("--set", s)]
    result = run_main("--recipe", "smoke", "--device", "cpu", "--data-dir", str(cifar_dir),
                      *sets, "--no-save", "--json", "r.json", "--save-model", "m", cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "model saved to m" in result.stdout
    record = json.loads((folder / "r.json").read_text())
    return SimpleNamespace(folder=folder, model=folder / "m", record=record)


def test_eval_prints_the_accuracies_the_run_reported(trained, cifar_dir, capsys):
    assert main(["eval", str(trained.model), "--data-dir", str(cifar_dir),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    run = trained.record["runs"][-1]
    found = re.search(r"plain accuracy ([\d.]+)%\s+TTA accuracy ([\d.]+)%", out)
    assert found, out
    assert found.group(1) == f"{100 * run['val_acc']:.2f}"
    assert found.group(2) == f"{100 * run['tta_acc']:.2f}"
    assert "300 test images" in out and "note:" not in out


def test_load_gives_the_same_accuracy_exactly(trained, cifar):
    net = hlb.load(trained.model)
    assert not net.training
    images = normalize(cifar.test_images[:300], torch.float)
    labels = cifar.test_labels[:300]
    recipe = load_saved(trained.model).recipe
    assert json.loads(json.dumps(recipe.to_dict())) == trained.record["recipe"]
    tta = tta_accuracy(net, images, labels, recipe)
    plain, _ = plain_evaluation(net, images, labels, recipe)
    run = trained.record["runs"][-1]
    assert (plain.item(), tta.item()) == (run["val_acc"], run["tta_acc"])


def test_the_record_and_the_file_carry_the_package_version(trained):
    assert trained.record["hlb_version"] == hlb.__version__
    saved = load_saved(trained.model)
    assert saved.version == hlb.__version__
    assert saved.run["tta_acc"] == trained.record["runs"][-1]["tta_acc"]
    assert saved.run["summary"]["n"] == 1


def test_batchnorm_statistics_are_saved(tmp_path):
    recipe = override(get_recipe("smoke"), ["widths=8,8,8"])
    net = build_net(recipe, execution(recipe, "cpu"))
    net.train()
    with torch.no_grad():
        net(torch.randn(16, 3, 32, 32))             # moves the running statistics
    save_model(tmp_path / "m", net, recipe, {})
    loaded = hlb.load(tmp_path / "m")
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert any("running_var" in k for k in net.state_dict())


def test_half_precision_weights_round_trip_exactly(tmp_path):
    recipe = override(get_recipe("smoke"), ["widths=8,8,8"])
    net = build_net(recipe, execution(recipe, "cpu"))
    torch.nn.init.normal_(net.head.weight)
    half = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    net.load_state_dict(half)                        # float32 values that fp16 can hold
    net.half()
    save_model(tmp_path / "m", net, recipe, {})
    loaded = load_saved(tmp_path / "m").net
    assert torch.equal(loaded.head.weight.half(), net.head.weight)


def test_the_safetensors_package_reads_our_file(trained):
    st = pytest.importorskip("safetensors")
    from safetensors.torch import load_file
    tensors = load_file(str(trained.model))
    with st.safe_open(str(trained.model), "pt") as f:
        assert f.metadata()["format"] == FORMAT
    ours, _ = read_safetensors(trained.model)
    assert tensors.keys() == ours.keys()
    assert all(torch.equal(tensors[k], ours[k]) for k in ours)


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    recipe = override(get_recipe("smoke"), ["widths=8,8,8"])
    net = build_net(recipe, execution(recipe, "cpu"))
    with pytest.raises(HlbError, match="No space left.*nothing was left behind"):
        save_model(tmp_path / "m", net, get_recipe("smoke"), {})
    assert list(tmp_path.iterdir()) == []


def test_a_network_an_earlier_invocation_trained_is_not_saved(tmp_path):
    # --resume with every run already done: this process holds an untrained network, not
    # the weights of the record's last run.
    record = SimpleNamespace(net=torch.nn.Linear(1, 1), net_run=None,
                             results=[SimpleNamespace(run=4, diverged=False)])
    with pytest.raises(HlbError, match="run 4 was trained by an earlier invocation"):
        save(record, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_a_diverged_last_run_is_not_saved():
    record = SimpleNamespace(net=torch.nn.Linear(1, 1), results=[SimpleNamespace(diverged=True)])
    with pytest.raises(HlbError, match="diverged"):
        save(record, "never-written")
    assert not Path("never-written").exists()


class _RunsCode:
    """Unpickling this would create the file named by `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _bad_files(folder, good):
    data = good.read_bytes()
    files = {
        "missing": (folder / "absent", "no saved model at"),
        "folder": (folder, "is a folder"),
        "text": (folder / "notes.txt", "not a saved model"),
        "foreign": (folder / "foreign.safetensors", "not an hlb-cifar10 model"),
        "cut in the data": (folder / "cut1", "is truncated: tensor"),
        "cut in the header": (folder / "cut2", "truncated or not a saved model"),
        "pickle": (folder / "code.pkl", "a pickle: loading it could run code"),
        "torch.save": (folder / "model.pt", "zip archive (what torch.save writes"),
        "bad entry": (folder / "entry", "malformed entry"),
    }
    files["text"][0].write_text("hello, this is not a model\n" * 10)
    write_safetensors(files["foreign"][0], {"w": torch.ones(3)}, {"format": "something else"})
    files["cut in the data"][0].write_bytes(data[: len(data) // 2])
    files["cut in the header"][0].write_bytes(data[:40])
    files["pickle"][0].write_bytes(pickle.dumps(_RunsCode(folder / "ran"), protocol=4))
    torch.save({"w": torch.ones(3)}, files["torch.save"][0])
    header = json.dumps({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})
    files["bad entry"][0].write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"0000")
    return files


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "foreign", "cut in the data",
                                  "cut in the header", "pickle", "torch.save", "bad entry"])
def test_eval_refuses_a_bad_file_in_one_line(kind, trained, tmp_path, capsys):
    path, message = _bad_files(tmp_path, trained.model)[kind]
    assert main(["eval", str(path), "--device", "cpu", "--data-dir", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ran").exists()           # the pickle's code never ran
    assert not (tmp_path / "d").exists()             # refused before touching the data


def test_save_model_into_a_missing_folder_fails_before_training(tmp_path, capsys):
    assert main(["--recipe", "smoke", "--device", "cpu", "--data-dir", str(tmp_path / "d"),
                 "--save-model", str(tmp_path / "no" / "m")]) == 2
    err = capsys.readouterr().err
    assert "--save-model" in err and "does not exist" in err
    assert not (tmp_path / "d").exists()


def _with_recipe(path, source, recipe_values):
    tensors, metadata = read_safetensors(source)
    write_safetensors(path, tensors, {**metadata, "recipe": json.dumps(recipe_values)})
    return path


def test_a_model_saved_with_the_decoupled_rates_loads_with_the_same_rates(trained, tmp_path):
    """Before 2026-12-06 a recipe held SGD's rates in decoupled units; such a file still loads,
    its rates converted to the plain ones they were."""
    saved = load_saved(trained.model)
    old = saved.recipe.to_dict()
    for key in ("head_lr", "bias_lr", "whiten_bias_lr", "schedule"):
        del old[key]
    old.update(lr=8.0, bias_lr_scale=64.0, whiten_bias_lr_scale=1.0, weight_decay=0.0153)
    loaded = load_saved(_with_recipe(tmp_path / "old", trained.model, old))
    examples = 1024 * (1 + 1 / (1 - 0.85))
    assert (loaded.recipe.head_lr, loaded.recipe.bias_lr) == (8.0 / examples, 8.0 / examples * 64)
    # The decoupled decay was per example of the batch (100 here); the plain one per step.
    assert loaded.recipe.weight_decay == 0.0153 * 100 / examples
    rest = dict(loaded.recipe.to_dict(), weight_decay=saved.recipe.weight_decay)
    assert rest == saved.recipe.to_dict()
    assert torch.equal(loaded.net.head.weight, saved.net.head.weight)


def test_a_model_from_another_version_is_refused_naming_what_differs(trained, tmp_path):
    values = load_saved(trained.model).recipe.to_dict()
    del values["schedule"]
    with pytest.raises(HlbError, match="another hlb version \\(missing recipe values schedule\\)"):
        load_saved(_with_recipe(tmp_path / "cut", trained.model, values))
