"""Pixel masks: on screen, and written into the DAQ's chip configuration (docs/format.md section 11)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from astropix_nbmonitor.astropix4.layout import NUM_COLS, NUM_ROWS
from astropix_nbmonitor.hist import HitAccumulator
from astropix_nbmonitor.masks import PixelMask, enabled_pixels, read_mask, tot_without_masked, write_mask
from astropix_nbmonitor.noisy import NoisyPixel, find_noisy
from astropix_nbmonitor.sim import AstroPix4Simulator
from astropix_nbmonitor.windows import PixelTots
from conftest import shared_data_file

yaml = pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is needed for configuration files")

REAL_CONFIG = "config_v4_none_20250723_092534.yml"
ALL_ROWS = 2**36 - 2  # bits 1..35: every row's comparator disabled


@pytest.fixture(name="real_config")
def _real_config():
    return shared_data_file(REAL_CONFIG)


def _recconfig(doc, section="config"):
    return {k: int(v[1]) for k, v in doc["astropix4"][section]["recconfig"].items()}


def _without_recconfig(doc):
    out = copy.deepcopy(doc)
    for key in [k for k in out["astropix4"] if k.startswith("config")]:
        del out["astropix4"][key]["recconfig"]
    return out


def _changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


# ---------------------------------------------------------------------------
# The set
# ---------------------------------------------------------------------------


def test_add_and_remove_accept_tuples_noisy_pixels_and_iterables():
    mask = PixelMask()
    mask.add((0, 3, 4))
    mask.add(NoisyPixel(1, 5, 6, 100, 10.0))
    mask.add([(2, 0, 0), NoisyPixel(2, 15, 34, 1, 0.1)])
    mask.add(np.array([(3, 1, 1)]))
    assert mask.masked_pixels == {(0, 3, 4), (1, 5, 6), (2, 0, 0), (2, 15, 34), (3, 1, 1)}
    assert (1, 5, 6) in mask and NoisyPixel(0, 3, 4, 0, 0.0) in mask and (9, 9, 9) not in mask and "x" not in mask
    mask.remove(NoisyPixel(1, 5, 6, 100, 10.0))
    mask.remove([(2, 0, 0), (7, 7, 7)])  # a pixel not masked is ignored
    assert list(mask) == [(0, 3, 4), (2, 15, 34), (3, 1, 1)] and len(mask) == 3
    copy_ = mask.masked_pixels
    copy_.clear()
    assert len(mask) == 3
    mask.clear()
    assert len(mask) == 0


@pytest.mark.parametrize("bad", [(0, 16, 0), (0, 0, 35), (-1, 0, 0), (0, 1), "abc"])
def test_pixels_outside_the_matrix_or_not_pixels_are_refused(bad):
    with pytest.raises(ValueError, match="pixel"):
        PixelMask().add(bad)


def test_apply_sets_masked_pixels_to_nan_in_every_layout():
    mask = PixelMask([(0, 3, 4), (1, 5, 6)])
    counts = np.arange(NUM_COLS * NUM_ROWS).reshape(NUM_COLS, NUM_ROWS)
    shown = mask.apply(counts, chip=0)
    assert shown.dtype == np.float64 and np.isnan(shown[3, 4]) and not np.isnan(shown[5, 6])
    assert np.count_nonzero(np.isnan(shown)) == 1 and counts.dtype.kind == "i"
    assert np.count_nonzero(np.isnan(mask.apply(counts))) == 2  # all chips: masked on any chip
    drawn = mask.apply(counts.T, chip=1, rows_first=True)
    assert np.isnan(drawn[6, 5]) and np.count_nonzero(np.isnan(drawn)) == 1
    chips = np.ones((32, NUM_COLS, NUM_ROWS))
    shown3 = mask.apply(chips)
    assert np.isnan(shown3[0, 3, 4]) and np.isnan(shown3[1, 5, 6]) and np.count_nonzero(np.isnan(shown3)) == 2


def test_masked_hits_count_what_the_display_leaves_out():
    mask = PixelMask([(0, 3, 4), (1, 3, 4), (1, 5, 6)])
    chips = np.zeros((32, NUM_COLS, NUM_ROWS), dtype=np.int64)
    chips[0, 3, 4], chips[1, 3, 4], chips[1, 5, 6], chips[2, 5, 6] = 10, 20, 30, 40
    assert mask.masked_hits(chips) == 60
    assert mask.masked_hits(chips[1], chip=1) == 50
    assert mask.masked_hits(chips.sum(axis=0)) == 30 + 70  # each masked pixel once


def test_tot_without_masked_leaves_the_masked_pixels_hits_out():
    sim = AstroPix4Simulator(seed=7, chip_ids=(0, 1), noisy_pixels=[(30, 1)], noisy_rate=0.2)
    hits = sim.generate(5000).truth
    acc, pix = HitAccumulator(NUM_ROWS, NUM_COLS), PixelTots(NUM_ROWS, NUM_COLS)
    acc.fill(hits)
    pix.fill(hits)
    noisy = find_noisy(acc.snapshot()["chip_hit_map"].values(), 50.0)
    assert {p.pixel for p in noisy} == {(0, 1, 30), (1, 1, 30)}
    mask = PixelMask(noisy)
    kept = hits[~((hits["column"] == 1) & (hits["row"] == 30))]
    ref = HitAccumulator(NUM_ROWS, NUM_COLS)
    ref.fill(kept)
    shown = tot_without_masked(acc.tot_hist(), pix, mask)
    assert shown.axes == acc.tot_hist().axes
    assert np.array_equal(shown.values(flow=True), ref.tot_hist().values(flow=True))
    one = tot_without_masked(acc.tot_hist(1), pix, mask, chip=1)
    assert np.array_equal(one.values(flow=True), ref.tot_hist(1).values(flow=True))
    assert acc.tot_hist().sum(flow=True) == len(hits)  # the monitor's own histogram stays complete
    with pytest.raises(ValueError, match="edges"):
        tot_without_masked(acc.tot_hist(), PixelTots(NUM_ROWS, NUM_COLS, tot_edges=[0, 1, 2]), mask)


# ---------------------------------------------------------------------------
# The real configuration file
# ---------------------------------------------------------------------------


def test_the_real_file_disables_every_pixel_but_one(real_config):
    doc = yaml.safe_load(real_config.read_text())
    rec = _recconfig(doc)
    for column in range(NUM_COLS):
        if column != 9:
            assert rec[f"col{column}"] & ALL_ROWS == ALL_ROWS
    disabled = read_mask(real_config)
    assert len(disabled) == NUM_COLS * NUM_ROWS - 1
    # docs/format.md section 11 says the file enables no pixel; col9's word has bit 1 clear:
    assert enabled_pixels(real_config) == {(0, 9, 0)}
    assert read_mask(real_config, chip_id=4).masked_pixels == {(4, c, r) for _, c, r in disabled}


def test_safe_dump_in_the_daqs_style_reproduces_the_real_file(real_config):
    # Checked once: PyYAML's block style gives the DAQ's file back byte for byte,
    # but write_mask edits the text in place anyway (any file keeps its bytes).
    text = real_config.read_text()
    assert yaml.safe_dump(yaml.safe_load(text), sort_keys=False, default_flow_style=False) == text


def test_masking_three_pixels_changes_exactly_their_bits(real_config, tmp_path):
    text = real_config.read_text()
    # Enable every pixel of columns 3 and 7 first (analog out on for 7), so that the mask has bits to set.
    base_text = text.replace("      col3:\n      - 38\n      - 68719476734\n", "      col3:\n      - 38\n      - 0\n")
    base_text = base_text.replace("      col7:\n      - 38\n      - 68719476734\n", "      col7:\n      - 38\n      - 137438953472\n")
    assert "col3:\n      - 38\n      - 0\n" in base_text and "137438953472" in base_text
    base = tmp_path / "run.yml"
    base.write_text(base_text)
    mask = PixelMask([(0, 3, 5), (0, 7, 0), (0, 7, 34)])
    out = write_mask(mask, tmp_path / "masked.yml", config=base)
    assert out == tmp_path / "masked.yml"
    before, after = yaml.safe_load(base_text), yaml.safe_load(out.read_text())
    rb, ra = _recconfig(before), _recconfig(after)
    assert rb.keys() == ra.keys()
    changes = {k: ra[k] ^ rb[k] for k in rb if ra[k] != rb[k]}
    assert changes == {"col3": 1 << 6, "col7": (1 << 1) | (1 << 35)}
    assert all(ra[k] & rb[k] == rb[k] for k in rb)  # no bit cleared
    assert _without_recconfig(after) == _without_recconfig(before)  # every other key and value
    assert [(x.strip(), y.strip()) for x, y in _changed_lines(base_text, out.read_text())] == [
        ("- 0", "- 64"),
        ("- 137438953472", f"- {137438953472 | 2 | 2**35}"),
    ]
    # It reads back: those three are disabled now, the rest of columns 3 and 7 still enabled.
    assert mask.masked_pixels <= read_mask(out).masked_pixels
    assert enabled_pixels(out) == enabled_pixels(base) - mask.masked_pixels
    assert len(enabled_pixels(base)) == 2 * NUM_ROWS + 1


def test_masking_on_the_real_file_leaves_the_rest_of_the_file_unchanged(real_config, tmp_path):
    text = real_config.read_text()
    out = write_mask(PixelMask([(0, 9, 0), (0, 1, 1)]), tmp_path / "masked.yml", config=real_config)
    new = out.read_text()
    assert [(x.strip(), y.strip()) for x, y in _changed_lines(text, new)] == [("- 274877906940", "- 274877906942")]
    assert enabled_pixels(out) == set() and len(read_mask(out)) == NUM_COLS * NUM_ROWS
    assert real_config.read_text() == text  # the run's file is only read


def test_a_flow_style_file_with_comments_keeps_its_bytes(tmp_path):
    cols = "\n".join(f"      col{c}: [38, {'0b0' if c == 0 else '0x0' if c == 1 else 0}]" for c in range(NUM_COLS))
    text = (
        "# chip configuration, hand written\n"
        "astropix4:\n"
        "  telescope: {nchips: 1}\n"
        "  geometry: {cols: 16, rows: 35}   # AstroPix 4\n"
        "  config:\n"
        "    digitalconfig: {clkmux: [1, 0], maxcyc: [6, 63]}\n"
        "    recconfig:\n" + cols + "\n"
    )
    src = tmp_path / "flow.yml"
    src.write_text(text)
    out = write_mask(PixelMask([(0, 0, 0), (0, 1, 2), (0, 15, 34)]), tmp_path / "out.yml", config=src)
    changed = _changed_lines(text, out.read_text())
    assert [(x.strip(), y.strip()) for x, y in changed] == [
        ("col0: [38, 0b0]", "col0: [38, 0b10]"),
        ("col1: [38, 0x0]", "col1: [38, 0x8]"),
        ("col15: [38, 0]", f"col15: [38, {2**35}]"),
    ]
    assert read_mask(out).masked_pixels == {(0, 0, 0), (0, 1, 2), (0, 15, 34)}


def test_a_config_given_as_a_dict_is_dumped_in_the_daqs_style_and_not_modified(real_config, tmp_path):
    doc = yaml.safe_load(real_config.read_text())
    kept = copy.deepcopy(doc)
    out = write_mask(PixelMask([(0, 9, 0)]), tmp_path / "m.yml", config=doc)
    assert doc == kept
    new = yaml.safe_load(out.read_text())
    assert _recconfig(new)["col9"] == 274877906942 and _without_recconfig(new) == _without_recconfig(doc)
    assert list(new["astropix4"]) == list(doc["astropix4"])  # key order kept
    assert len(_changed_lines(real_config.read_text(), out.read_text())) == 1


def test_writing_onto_the_configuration_file_itself(real_config, tmp_path):
    path = tmp_path / "run.yml"
    path.write_text(real_config.read_text())
    write_mask(PixelMask([(0, 9, 0)]), path, config=path)
    assert enabled_pixels(path) == set()


def test_without_a_config_a_minimal_document_enables_every_other_pixel(tmp_path):
    mask = PixelMask([(0, 2, 3), (0, 2, 4), (0, 11, 0)])
    out = write_mask(mask, tmp_path / "mask.yml")
    doc = yaml.safe_load(out.read_text())
    assert doc == {
        "astropix4": {
            "telescope": {"nchips": 1},
            "geometry": {"cols": 16, "rows": 35},
            "config": {"recconfig": {f"col{c}": [38, {2: 2**4 | 2**5, 11: 2}.get(c, 0)] for c in range(16)}},
        }
    }
    assert read_mask(out) == mask
    assert len(enabled_pixels(out)) == NUM_COLS * NUM_ROWS - 3
    # A mask of another chip written for a single-chip file: that chip's pixels only.
    other = write_mask(PixelMask([(3, 1, 1), (0, 2, 2)]), tmp_path / "chip3.yml", chip_id=3)
    assert read_mask(other, chip_id=3).masked_pixels == {(3, 1, 1)}


def _two_chip_config() -> dict:
    rec = {f"col{c}": [38, 0] for c in range(NUM_COLS)}
    return {
        "astropix4": {
            "telescope": {"nchips": 2},
            "geometry": {"cols": 16, "rows": 35},
            "config_0": {"digitalconfig": {"clkmux": [1, 0]}, "recconfig": copy.deepcopy(rec)},
            "config_1": {"digitalconfig": {"clkmux": [1, 1]}, "recconfig": copy.deepcopy(rec)},
        }
    }


def test_multi_chip_files_one_section_per_chip(tmp_path):
    mask = PixelMask([(0, 1, 1), (1, 2, 2), (1, 3, 3)])
    both = write_mask(mask, tmp_path / "both.yml", config=_two_chip_config(), chip_id=None)
    assert read_mask(both, chip_id=None) == mask
    assert read_mask(both, chip_id=1).masked_pixels == {(1, 2, 2), (1, 3, 3)}
    one = write_mask(mask, tmp_path / "one.yml", config=_two_chip_config(), chip_id=1)
    assert read_mask(one, chip_id=None).masked_pixels == {(1, 2, 2), (1, 3, 3)}
    assert len(enabled_pixels(one, chip_id=None)) == 2 * NUM_COLS * NUM_ROWS - 2
    with pytest.raises(ValueError, match="chip_id 2"):
        write_mask(mask, tmp_path / "x.yml", config=_two_chip_config(), chip_id=2)
    single = yaml.safe_load(write_mask(mask, tmp_path / "s.yml").read_text())
    with pytest.raises(ValueError, match="single-chip"):
        read_mask(single, chip_id=None)


def test_bad_configurations_are_refused(tmp_path):
    with pytest.raises(ValueError, match="astropix"):
        read_mask({"other": {}})
    with pytest.raises(ValueError, match="recconfig"):
        read_mask({"astropix4": {"telescope": {"nchips": 1}, "config": {}}})
    small = {"astropix4": {"geometry": {"cols": 16, "rows": 10}, "config": {"recconfig": {f"col{c}": [13, 0] for c in range(16)}}}}
    with pytest.raises(ValueError, match="10 rows"):
        write_mask(PixelMask([(0, 0, 20)]), tmp_path / "x.yml", config=small)
    path = tmp_path / "list.yml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="not a chip configuration"):
        read_mask(path)
