import json
import sys

import pytest

pytest.importorskip("matplotlib")     # optional dependency: requirements-plot.txt

from test_records import make_record    # noqa: E402  (the tests folder is on sys.path)

from hlb.bench import plot  # noqa: E402
from hlb.bench.plot import plot_records  # noqa: E402
from hlb.errors import HlbError, UsageError  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(path, record):
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def two_records(tmp_path):
    a = _write(tmp_path / "before.json", make_record(accs=(0.50, 0.53, 0.55),
                                                      times=(20.0, 21.0, 22.0)))
    b = _write(tmp_path / "after.json", make_record(
        accs=(0.58, 0.60, 0.61), times=(15.0, 16.0, 15.5), overrides=["lr=4"]))
    return a, b


def _coloured_pixels(image, x0, x1, red_wins):
    """Count strongly coloured pixels in a vertical band: blue (C0) or orange (C1) ones."""
    h, w = image.shape[:2]
    # Leave out the title (top) and the figure legend (bottom): only the axes count.
    band = image[int(0.1 * h):int(0.85 * h), int(x0 * w):int(x1 * w), :3]
    r, b = band[..., 0], band[..., 2]
    saturation = band.max(axis=-1) - band.min(axis=-1)
    wins = (r > b) if red_wins else (b > r)
    return int(((saturation > 0.35) & wins).sum())


def test_plot_of_two_records_is_a_png_with_three_drawn_panels(two_records, tmp_path):
    from matplotlib.image import imread
    out = plot_records(two_records, tmp_path / "plot.png")
    assert out == tmp_path / "plot.png"
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert 30_000 < len(data) < 2_000_000
    image = imread(out)
    assert image.shape[1] > 1500 and image.shape[0] > 500        # 17 x 6 inches at 120 dpi
    colours = {tuple(p) for p in image[..., :3].reshape(-1, 3)[::7].round(2).tolist()}
    assert len(colours) > 100
    # Each panel (left, middle, right third) shows both records: blue and orange pixels.
    for x0, x1 in [(0.03, 0.38), (0.41, 0.68), (0.71, 0.99)]:
        assert _coloured_pixels(image, x0, x1, red_wins=False) > 150, (x0, "blue")
        assert _coloured_pixels(image, x0, x1, red_wins=True) > 150, (x0, "orange")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["after.json", "before.json",
                                                           "plot.png"]     # no temp file


def test_the_same_records_give_the_same_picture(two_records, tmp_path):
    first = plot_records(two_records, tmp_path / "one.png").read_bytes()
    assert plot_records(two_records, tmp_path / "two.png").read_bytes() == first


def test_diverged_runs_a_single_record_and_many_runs_still_plot(tmp_path):
    odd = _write(tmp_path / "odd.json", make_record(accs=(0.5, 0.6, 0.7), times=(9, 9, 9),
                                                    diverged=(1,)))
    dead = _write(tmp_path / "dead.json", make_record(accs=(0.5,), diverged=(0,)))
    many = _write(tmp_path / "many.json", make_record(accs=[0.5 + i / 100 for i in range(8)],
                                                      times=[9.0] * 8))     # a box is drawn
    assert plot_records([odd], tmp_path / "one.png").stat().st_size > 10_000
    assert plot_records([odd, dead, many], tmp_path / "three.png").stat().st_size > 10_000


def test_labels_name_the_recipe_its_overrides_and_the_file_when_ambiguous(tmp_path):
    same_a = plot._Arm(make_record(), tmp_path / "a.json")
    same_b = plot._Arm(make_record(accs=(0.5, 0.6, 0.7), times=(9, 9, 9), diverged=(2,)),
                       tmp_path / "runs" / "20250101-000000-smoke-12345678" / "record.json")
    other = plot._Arm(make_record(overrides=["lr=4"]), tmp_path / "b.json")
    old = plot._Arm(make_record(argv=["--set", "lr=2"]), tmp_path / "c.json")   # argv only
    assert plot._labels([same_a, other, old], None) == ["smoke (n=2)", "smoke lr=4 (n=2)",
                                                        "smoke lr=2 (n=2)"]
    assert plot._labels([same_a, same_b], None) == [
        "smoke [a] (n=2)", "smoke [20250101-000000-smoke-12345678] (n=2, 1 diverged)"]
    assert plot._labels([same_a], ["baseline"]) == ["baseline (n=2)"]
    with pytest.raises(UsageError, match="2 labels for 1 records"):
        plot._labels([same_a], ["x", "y"])


def test_missing_matplotlib_says_how_to_install_it(two_records, tmp_path, monkeypatch):
    # None in sys.modules makes `import matplotlib...` fail, as if it were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(HlbError, match="requirements-plot.txt") as e:
        plot_records(two_records, tmp_path / "plot.png")
    assert "\n" not in str(e.value) and not (tmp_path / "plot.png").exists()


@pytest.mark.parametrize("content, message", [
    (None, "no record at"),
    ("{not json", "is not JSON"),
    ("[1, 2, 3]", "not an hlb record"),
    ('{"runs": "none"}', "not an hlb record"),
])
def test_a_bad_record_file_is_a_one_line_error(two_records, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(HlbError, match=message) as e:
        plot_records([two_records[0], bad], tmp_path / "plot.png")
    assert "\n" not in str(e.value) and str(bad) in str(e.value)
    assert not (tmp_path / "plot.png").exists()


def test_bad_output_places_and_no_records(two_records, tmp_path):
    with pytest.raises(HlbError, match="does not exist"):
        plot_records(two_records, tmp_path / "missing" / "plot.png")
    with pytest.raises(UsageError, match="nothing to plot"):
        plot_records([], tmp_path / "plot.png")


def test_a_failed_write_leaves_no_temporary_file(two_records, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", full)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(HlbError, match="could not write the plot .*No space left"):
        plot_records(two_records, out_dir / "plot.png")
    assert list(out_dir.iterdir()) == []


def test_command_line_writes_the_plot(two_records, tmp_path, capsys):
    from hlb.bench.cli import main
    out = tmp_path / "cli.png"
    assert main(["plot", *[str(p) for p in two_records], "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert main(["plot", str(tmp_path / "nope.json"), "-o", str(out)]) == 1
    assert "error: no record at" in capsys.readouterr().err
