"""The hit map's colour canvas: palette indices computed in the kernel, one byte a cell."""

from __future__ import annotations

import numpy as np
import pytest

from astropix_nbmonitor.monitor.matrix import NULL_INDEX, SCHEMES, MatrixCanvas, color_indices, palette_bytes, stack_underlays


def test_palette_runs_through_the_scheme_and_ends_with_the_null_colour():
    palette = np.frombuffer(palette_bytes("viridis", "#c8c8c8"), dtype=np.uint8).reshape(256, 4)
    assert tuple(palette[0, :3]) == (0x44, 0x01, 0x54) and tuple(palette[NULL_INDEX - 1, :3]) == (0xFD, 0xE7, 0x25)
    assert tuple(palette[NULL_INDEX]) == (0xC8, 0xC8, 0xC8, 255) and (palette[:, 3] == 255).all()
    # The scheme's own points are on the palette (anchors at evenly spaced indices).
    anchors = SCHEMES["viridis"]
    middle = round((NULL_INDEX - 1) * 5 / (len(anchors) - 1))
    assert np.abs(palette[middle, :3].astype(int) - [int(anchors[5][k : k + 2], 16) for k in (1, 3, 5)]).max() <= 2
    with pytest.raises(ValueError, match="unknown colour scheme"):
        palette_bytes("jet", "#c8c8c8")
    with pytest.raises(ValueError, match="#rrggbb"):
        palette_bytes("viridis", "grey")


def test_indices_follow_the_scale_clip_at_its_ends_and_mark_missing_values():
    values = np.array([[0.0, 5.0, 10.0, 20.0, -3.0, np.nan]])
    index = color_indices(values, 0.0, 10.0)
    assert index.dtype == np.uint8
    assert index.tolist() == [[0, 127, 254, 254, 0, NULL_INDEX]]
    # A diverging scale: the middle value in the middle of the palette, each half stretched.
    ratio = np.array([[0.0, 0.5, 1.0, 2.0, 4.0]])
    assert color_indices(ratio, 0.0, 4.0, mid=1.0).tolist() == [[0, 64, 127, 169, 254]]
    # An empty scale (max == min) draws everything in the lowest colour.
    assert color_indices(np.ones((2, 2)), 1.0, 1.0).tolist() == [[0, 0], [0, 0]]


def test_the_canvas_sends_one_byte_a_cell_and_only_when_the_picture_changed():
    matrix = MatrixCanvas(3, 2, null_color="#808080")
    try:
        values = np.array([[0, 1], [2, 3], [4, np.nan]])
        matrix.show(values, 0.0, 4.0)
        assert len(matrix.pixels) == 6 and matrix.pixels[-1] == NULL_INDEX
        assert np.array_equal(matrix.color, values, equal_nan=True)
        drawn = matrix.drawn_colors()
        assert drawn.shape == (3, 2, 3) and tuple(drawn[2, 1]) == (0x80, 0x80, 0x80)
        sent = []
        matrix.observe(lambda change: sent.append(change["name"]), names=["pixels", "palette"])
        matrix.show(values.copy(), 0.0, 4.0)  # the same picture: nothing to send
        assert sent == []
        matrix.show(values * 2, 0.0, 4.0)
        assert sent == ["pixels"]
        matrix.set_scheme("RdBu")
        assert sent == ["pixels", "palette"] and matrix.scheme == "RdBu"
        with pytest.raises(ValueError, match="for a 3 x 2 matrix"):
            matrix.show(np.zeros((2, 3)), 0.0, 1.0)
    finally:
        matrix.close()


def test_the_canvas_follows_its_figure_and_sits_just_before_it():
    import bqplot

    figure, other = bqplot.Figure(fig_margin={"top": 5, "bottom": 6, "left": 7, "right": 8}), bqplot.Figure()
    matrix = MatrixCanvas(35, 16)
    try:
        matrix.follow(figure)
        assert matrix.inset == {"top": 5, "bottom": 6, "left": 7, "right": 8}
        assert figure.background_style["fill"] == "none" and matrix.target in figure._dom_classes
        figure.fig_margin = {"top": 1, "bottom": 2, "left": 3, "right": 4}
        assert matrix.inset["left"] == 3
        stacked = stack_underlays([other, figure])
        assert stacked == [other, matrix, figure] and stack_underlays(stacked) == stacked
    finally:
        for w in (matrix, figure, other):
            w.close()
