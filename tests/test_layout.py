"""Several chips: ``AstroPix4SimpleMonitor(layout=...)`` shows one hit map per chip, where the layout says."""

from __future__ import annotations

import bqplot
import ipywidgets as widgets
import numpy as np
import pytest

from astropix_nbmonitor.monitor import AstroPix4SimpleMonitor, HitMapPanel
from astropix_nbmonitor.monitor.chips import LAYOUT_PRESETS, ChipMapPanel, normalize_layout
from astropix_nbmonitor.sim import AstroPix4Simulator
from conftest import monitor_threads, send_paced, wait_for


@pytest.fixture
def quad():
    mon = AstroPix4SimpleMonitor(port=0, layout=[[0, 1], [2, 3]])
    yield mon
    mon.close()
    assert monitor_threads() == []


def _places(mon: AstroPix4SimpleMonitor) -> dict[int, tuple[int, int]]:
    """chip_id -> (row, column) of the layout, read from the widgets: the figure's CSS grid place and its class."""
    out = {}
    for figure in mon.chip_grid.figures:
        chips = [int(c.split("-")[-1]) for c in figure._dom_classes if c.startswith("apx-chip-")]
        assert len(chips) == 1, figure._dom_classes
        out[chips[0]] = (int(figure.layout.grid_row) - 1, int(figure.layout.grid_column) - 1)
    return out


@pytest.mark.parametrize(
    ("layout", "places", "columns"),
    [
        ([[0, 1], [2, 3]], {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)}, 2),
        ("quad", {0: (0, 0), 1: (0, 1), 2: (1, 0), 3: (1, 1)}, 2),
        ([[4], [7], [2]], {4: (0, 0), 7: (1, 0), 2: (2, 0)}, 1),
        ([[5, None, 9], [30]], {5: (0, 0), 9: (0, 2), 30: (1, 0)}, 3),  # a gap, a ragged row
    ],
)
def test_the_layout_places_each_chip_map_where_it_says(layout, places, columns):
    mon = AstroPix4SimpleMonitor(port=0, layout=layout)
    try:
        assert _places(mon) == places
        grid = mon.chip_grid
        assert grid.box.layout.grid_template_columns == f"repeat({columns}, minmax(0, 1fr))"
        for chip, (row, column) in places.items():
            assert grid.chip_at(row, column) == chip
            # The same place as a CSS rule for the figure's cell class (what the page applies).
            cell = f"apx-cell-{row + 1}-{column + 1}"
            assert cell in mon.chip_maps[chip].figure._dom_classes
            assert f".apx-chips > .{cell} {{ grid-row: {row + 1}; grid-column: {column + 1}; }}" in grid.places_style.value
            assert mon.chip_maps[chip].shown_title == f"chip {chip}"  # before any data
        assert set(mon.chip_maps) == set(places)
        # Under the main plots, which stay (the summed view and the chip selector).
        children = list(mon.children)
        assert children.index(grid.box) == children.index(mon.canvas) + 1
        assert mon.panel(HitMapPanel).figure in mon.canvas.children and mon.chip_selector in mon.toolbar.children
        mon.refresh()
        assert all(mon.chip_maps[c].shown_title == f"chip {c}, no data" for c in places)
    finally:
        mon.close()


def test_without_a_layout_there_is_the_one_map_of_today():
    mon = AstroPix4SimpleMonitor(port=0)
    try:
        assert mon.chip_grid is None and mon.chip_maps == {} and mon.layout_rows is None
        assert not any(isinstance(p, ChipMapPanel) for p in mon.panels)
        assert list(mon.children) == [mon.toolbar, mon.dashboard, mon.canvas]
        assert mon.liveness in mon.dashboard.children  # carrying the lines that change at every refresh
    finally:
        mon.close()
    # A widget Layout is still the widget's own CSS layout.
    mon = AstroPix4SimpleMonitor(port=0, layout=widgets.Layout(width="900px"))
    try:
        assert mon.chip_grid is None and mon.layout.width == "900px"
    finally:
        mon.close()


@pytest.mark.parametrize(
    ("layout", "error", "words"),
    [
        ([[0, 1], [1, 2]], ValueError, "names chip 1 twice: at row 0, column 1 and at row 1, column 0"),
        ([[0, 31]], ValueError, "chip_id 31 is outside 0 to 30"),
        ([[-1]], ValueError, "chip_id -1 is outside 0 to 30"),
        ([[0, 1.5]], TypeError, "layout[0][1] must be a chip_id"),
        ([[True]], TypeError, "layout[0][0] must be a chip_id"),
        ([0, 1], TypeError, "layout row 0 must be a list of chip_ids"),
        (["01"], TypeError, "layout row 0 must be a list of chip_ids"),
        ([], ValueError, "layout names no chip"),
        ([[None]], ValueError, "layout names no chip"),
        ("hexagon", ValueError, "unknown layout 'hexagon'"),
        (7, TypeError, "layout must be rows of chip_ids"),
    ],
)
def test_a_bad_layout_is_refused_with_a_clear_message(layout, error, words):
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        AstroPix4SimpleMonitor(port=0, layout=layout)
    assert monitor_threads() == []


def test_presets_and_ragged_rows_normalise():
    assert normalize_layout("quad") == ((0, 1), (2, 3)) == LAYOUT_PRESETS["quad"]
    assert normalize_layout([[np.int64(3)], [4, 5]]) == ((3,), (4, 5))
    assert normalize_layout(((1, None), (None, 2))) == ((1, None), (None, 2))


def test_each_chip_map_is_that_chips_hit_map_after_data_over_loopback(quad):
    run = AstroPix4Simulator(seed=11, chip_ids=(0, 1, 2, 3), hits_per_readout=3).generate(3000)
    quad.start(refresh_interval=0.05)
    send_paced(quad.port, run.records)
    wait_for(lambda: quad.engine.num_readouts >= 3000, what="every readout processed")
    quad.stop()
    quad.refresh()
    assert quad.chips_seen == [0, 1, 2, 3]
    total = np.zeros((16, 35))
    for chip, panel in quad.chip_maps.items():
        expected = quad.chip_hit_map(chip).values()
        assert expected.sum() > 0
        assert np.array_equal(panel.heatmap.color, expected.T), chip
        total += expected
        title = panel.shown_title
        assert title.startswith(f"chip {chip}, ") and "hits/s" in title
        assert panel.heatmap.caption == title and not panel.figure.title  # drawn by the colour canvas, not by bqplot
    assert np.array_equal(total, quad.hit_map.values())
    # The main map still shows the sum of all chips.
    assert np.array_equal(quad.heatmap.color, quad.hit_map.values().T)


def _uneven(mon: AstroPix4SimpleMonitor) -> None:
    """Chip 1 gets many more hits than chip 0."""
    mon.replay(AstroPix4Simulator(seed=2, chip_ids=(0, 1), hits_per_readout=1).generate(200).records)
    mon.replay(AstroPix4Simulator(seed=3, chip_ids=(1,), hits_per_readout=5).generate(2000).records)


def test_one_shared_colour_scale_or_one_per_chip():
    mon = AstroPix4SimpleMonitor(port=0, layout=[[0, 1]])
    try:
        _uneven(mon)
        low, high = mon.chip_maps[0], mon.chip_maps[1]
        top0, top1 = mon.chip_hit_map(0).values().max(), mon.chip_hit_map(1).values().max()
        assert top1 > 4 * top0
        # Shared (the default): both colour bars reach the busiest chip's top.
        assert mon.shared_scale and mon.chip_grid.scale_toggle.value is True
        assert low.color_scale.max == high.color_scale.max >= top1
        assert np.array_equal(low.color_axis.tick_values, high.color_axis.tick_values)
        # Per chip, through the traitlet: each to its own top; the toolbar toggle follows.
        mon.shared_scale = False
        assert mon.chip_grid.scale_toggle.value is False
        assert top0 <= low.color_scale.max < top1 <= high.color_scale.max
        # And back, through the toolbar toggle.
        mon.chip_grid.scale_toggle.value = True
        assert mon.shared_scale and low.color_scale.max == high.color_scale.max
        # The log switch of the main map applies to the chip maps.
        mon.scale_toggle.value = "log"
        assert np.allclose(high.heatmap.color, np.log10(1 + mon.chip_hit_map(1).values().T))
        assert high.shown_title.endswith("(log10)")
    finally:
        mon.close()
    mon = AstroPix4SimpleMonitor(port=0, layout=[[0, 1]], shared_scale=False)
    try:
        _uneven(mon)
        assert mon.chip_grid.scale_toggle.value is False
        assert mon.chip_maps[0].color_scale.max < mon.chip_maps[1].color_scale.max
    finally:
        mon.close()


def _click(panel: HitMapPanel, column: int, row: int) -> None:
    """What the page sends on a click on a cell: the colour canvas's message."""
    panel.heatmap._handle_custom_msg({"event": "click", "row": row, "column": column}, [])


def test_maps_have_no_layer_of_cells_and_their_canvas_answers_clicks_and_hovers(quad):
    quad.replay(AstroPix4Simulator(seed=5, chip_ids=(0, 1, 2, 3), hits_per_readout=2).generate(2000).records)
    panel = quad.chip_maps[1]
    assert panel.heatmap.pointer and quad.panel(HitMapPanel).heatmap.pointer
    for figure in (panel.figure, quad.panel(HitMapPanel).figure):
        assert not [m for m in figure.marks if isinstance(m, bqplot.GridHeatMap)]
    counts = quad.chip_hit_map(1).values()
    panel.heatmap._handle_custom_msg({"event": "hover", "row": 20, "column": 9}, [])
    assert panel.heatmap.hint == {"row": 20, "column": 9, "text": f"row 20, column 9, chip 1: {int(counts[9, 20]):,} hits"}
    # What the page may send and the map ignores: not a cell, outside the matrix, another event, garbage.
    for junk in ({"event": "hover", "row": 35, "column": 0}, {"event": "click", "row": "x", "column": 1},
                 {"event": "element_click", "row": 1, "column": 1}, {"event": "click"}, ["click", 1, 1], "hover"):
        panel.heatmap._handle_custom_msg(junk, [])
    assert quad.selected_pixel is None and panel.heatmap.hint["row"] == 20
    panel.heatmap._handle_custom_msg({"event": "click", "row": 20, "column": 9}, [])
    assert quad.selected_pixel == (9, 20) and quad.shown_chip == 1


def test_a_click_on_chip_2s_map_selects_chip_2s_pixel(quad):
    quad.replay(AstroPix4Simulator(seed=5, chip_ids=(0, 1, 2, 3), hits_per_readout=2).generate(2000).records)
    counts = quad.chip_hit_map(2).values()
    column, row = (int(i) for i in np.unravel_index(int(np.argmax(counts)), counts.shape))
    _click(quad.chip_maps[2], column, row)
    assert quad.shown_chip == 2 and quad.chip_selector.value == 2
    assert quad.selected_pixel == (column, row)
    assert quad.pixel_panel.figure.title == f"Pixel column {column}, row {row}, chip 2: TOT, {int(counts[column, row]):,} hits (whole run)"
    assert quad.pixel_tot_hist(column, row, chip_id=2).sum(flow=True) == counts[column, row]
    # The marker is on chip 2's map (and on the main map, which now shows chip 2), on no other chip's.
    marked = quad.chip_maps[2]
    assert marked.selected_marker in marked.figure.marks
    assert list(marked.selected_marker.x) == [column] and list(marked.selected_marker.y) == [row]
    for chip in (0, 1, 3):
        assert quad.chip_maps[chip].selected_marker not in quad.chip_maps[chip].figure.marks
    assert np.array_equal(quad.heatmap.color, counts.T)
    # The same pixel of another chip selects that chip's pixel; a second click there deselects.
    _click(quad.chip_maps[0], column, row)
    assert quad.shown_chip == 0 and quad.selected_pixel == (column, row)
    assert quad.chip_maps[2].selected_marker not in quad.chip_maps[2].figure.marks
    _click(quad.chip_maps[0], column, row)
    assert quad.selected_pixel is None
    # The chip selector's summed view stays available.
    quad.chip_selector.value = -1
    assert quad.shown_chip is None and np.array_equal(quad.heatmap.color, quad.hit_map.values().T)


def test_masks_and_noisy_pixels_are_drawn_on_their_own_chips_map(quad):
    quad.replay(AstroPix4Simulator(seed=6, chip_ids=(0, 1, 2, 3), hits_per_readout=2).generate(1500).records)
    quad.mask_pixels([(2, 3, 4)])
    quad.refresh()
    on2, on0 = quad.chip_maps[2], quad.chip_maps[0]
    assert on2.mask_layer in on2.figure.marks and on0.mask_layer not in on0.figure.marks
    assert np.argwhere(np.asarray(on2.mask_layer.color) == 1).tolist() == [[4, 3]]
    assert np.isnan(on2.heatmap.color[4, 3]) and np.isnan(on2.heatmap.color).sum() == 1
    assert not np.isnan(np.asarray(on0.heatmap.color, dtype=float)).any()
    assert "1 masked" in on2.shown_title and "masked" not in on0.shown_title
    # The tooltip of the masked pixel says so.
    on2.heatmap._handle_custom_msg({"event": "hover", "row": 4, "column": 3}, [])
    assert on2.heatmap.hint["text"] == "row 4, column 3, chip 2: masked"
    # A noisy pixel of chip 1 only: marked on chip 1's map.
    noisy = AstroPix4Simulator(seed=7, chip_ids=(1,), noisy_pixels=[(30, 2)], noisy_rate=0.5).generate(3000).records
    quad.replay(noisy)
    assert [(p.chip_id, p.column, p.row) for p in quad.noisy_pixels()] == [(1, 2, 30)]
    on1 = quad.chip_maps[1]
    assert on1.noisy_markers in on1.figure.marks
    assert list(on1.noisy_markers.x) == [2] and list(on1.noisy_markers.y) == [30]
    assert all(quad.chip_maps[c].noisy_markers not in quad.chip_maps[c].figure.marks for c in (0, 2, 3))
    assert "1 noisy" in on1.shown_title


def test_a_viewer_of_a_hub_draws_each_chip_map_from_the_hubs_state():
    pytest.importorskip("zmq")
    mon = AstroPix4SimpleMonitor(port=0).start(refresh_interval=0.1)
    viewer = None
    try:
        publisher = mon.publish("tcp://127.0.0.1:0", refresh_interval=0.1)
        run = AstroPix4Simulator(seed=12, chip_ids=(3, 8), hits_per_readout=2).generate(1500)
        send_paced(mon.port, run.records)
        wait_for(lambda: mon.num_readouts == 1500, what="the hub's monitor to process the run")
        viewer = AstroPix4SimpleMonitor(hub=publisher.publish_url, layout=[[8, 3]]).start(refresh_interval=0.1)
        wait_for(
            lambda: viewer.hub_connected and np.array_equal(viewer.hit_map.values(), mon.hit_map.values()),
            what="the viewer to show the hub's state",
        )
        viewer.stop()
        viewer.refresh()
        assert _places(viewer) == {8: (0, 0), 3: (0, 1)}
        for chip in (3, 8):
            expected = mon.chip_hit_map(chip).values()
            assert expected.sum() > 0
            assert np.array_equal(viewer.chip_maps[chip].heatmap.color, expected.T)
            assert viewer.chip_maps[chip].shown_title.startswith(f"chip {chip}, ")
    finally:
        if viewer is not None:
            viewer.close()
        mon.close()
    assert monitor_threads() == []
