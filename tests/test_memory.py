import dataclasses

import pytest
import torch

from hlb.bench import memory
from hlb.bench.memory import MIB, activations, estimate, fit_note, needed_mib, print_fit_notes
from hlb.model import Net
from hlb.recipes import RECIPES


def test_the_estimate_of_the_measured_code_is_the_measurement():
    # 2026-12-04, H200, recipe 94 at commit 181efb7: 1670 MiB allocated, 4778 MiB reserved.
    before = estimate(RECIPES["94"], before=True)
    assert before.reserved_mib == pytest.approx(4778, rel=0.02)
    assert before.peak_moment == "augment"


def test_recipe_94_is_estimated_under_3_gib_after_the_lowering():
    now, before = estimate(RECIPES["94"]), estimate(RECIPES["94"], before=True)
    assert now.reserved_mib <= 3 * 1024
    assert now.card_mib > now.reserved_mib
    # The whole-set temporaries are gone from the largest moment.
    assert sum(t.mib for t in now.moments["augment"]) < \
        sum(t.mib for t in before.moments["augment"]) - 400


def autograd_saved_bytes(recipe, batch=4):
    """Bytes autograd keeps for backward in an eager fp32 forward on the meta device (the
    network's parameters and the input images, held anyway, left out)."""
    with torch.device("meta"):
        net, x = Net(recipe), torch.empty(batch, 3, 32, 32)
    skip = {p.untyped_storage()._cdata for p in net.parameters()}
    skip.add(x.untyped_storage()._cdata)
    kept = {}

    def pack(t):
        if t.untyped_storage()._cdata not in skip:
            kept[t.untyped_storage()._cdata] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum()
    return sum(kept.values()) / batch


@pytest.mark.parametrize("name", ["94", "96"])
def test_eager_activations_per_layer_are_what_autograd_keeps(name):
    recipe = RECIPES[name]
    saved, index_bytes, _, _ = activations(recipe, compiled=False)
    assert saved * 4 + index_bytes == pytest.approx(autograd_saved_bytes(recipe), rel=0.02)


def test_the_estimate_grows_with_the_batch_the_widths_and_the_data():
    base = RECIPES["94"]
    for change in ({"batch_size": 4000}, {"widths": (128, 384, 384)},
                   {"compile": False}, {"translate": 4}):
        assert estimate(dataclasses.replace(base, **change)).reserved_mib > \
            estimate(base).reserved_mib, change
    assert estimate(dataclasses.replace(base, train_images=10_000, batch_size=500)) \
        .reserved_mib < estimate(base).reserved_mib


def with_free(monkeypatch, free_mib):
    monkeypatch.setattr(memory, "free_gpu_memory",
                        lambda device: (int(free_mib * MIB), int(80 * 1024 * MIB)))


def test_no_note_with_enough_free_memory_or_off_a_gpu(monkeypatch):
    assert fit_note(RECIPES["94"], "cpu") is None                 # the real query: no GPU
    with_free(monkeypatch, needed_mib(RECIPES["94"]) + 1)
    assert fit_note(RECIPES["94"], "cuda") is None


def test_a_tight_card_gets_one_line_with_a_batch_that_fits(monkeypatch, capsys):
    recipe = RECIPES["94"]
    free = needed_mib(recipe) - 300
    with_free(monkeypatch, free)
    note = fit_note(recipe, "cuda")
    assert "\n" not in note and f"{free / 1024:.1f} GiB is free" in note
    batch = int(note.split("--set batch_size=")[1].split()[0])
    eval_batch = int(note.split("--set eval_batch_size=")[1].split()[0])
    assert batch < recipe.batch_size
    smaller = dataclasses.replace(recipe, batch_size=batch, eval_batch_size=eval_batch)
    assert needed_mib(smaller) <= free           # what it suggests fits, by the same estimate
    print_fit_notes([recipe, recipe], "cuda")
    assert capsys.readouterr().out.count("note: recipe 94 needs") == 2


def test_a_card_too_small_for_any_batch_is_told_to_use_the_cpu(monkeypatch):
    with_free(monkeypatch, 100)
    assert fit_note(RECIPES["94"], "cuda").endswith("try --device cpu, or free the GPU")
