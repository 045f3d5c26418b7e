"""Tests of astropix_nbmonitor.snapshot: a PNG and the dashboard's figures as text."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from astropix_nbmonitor import AstroPix4Simulator, MonitorEngine
from astropix_nbmonitor.engine import EngineState

pytest.importorskip("matplotlib", reason="the files extra (matplotlib) is not installed")

from astropix_nbmonitor import snapshot  # noqa: E402
from astropix_nbmonitor.snapshot import PNG_SIGNATURE, render_png, summary_text  # noqa: E402


@pytest.fixture(scope="module")
def state() -> EngineState:
    engine = MonitorEngine(port=0)
    sim = AstroPix4Simulator(seed=8, hits_per_readout=2.0, chip_ids=(0, 2), faults={"skip_ids": 0.01})
    engine.replay(sim.generate(3000).records)
    return engine.state()


def decoded_size(png: bytes) -> tuple[int, int]:
    from matplotlib.image import imread

    image = imread(io.BytesIO(png), format="png")
    return image.shape[1], image.shape[0]


def test_the_png_decodes(state: EngineState) -> None:
    png = render_png(state)
    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 10_000
    assert decoded_size(png) == (1500, 450)
    assert decoded_size(render_png(state, dpi=50, title="shift 3", log=True, chip=2)) == (750, 225)


def test_the_text_holds_the_counters(state: EngineState) -> None:
    text = summary_text(state, title="Shift log")
    lines = text.splitlines()
    assert lines[0].startswith("Shift log, ") and "chips 0, 2" in lines[0] and "stopped" in lines[0]
    assert lines[1:] == state.status.text_block()
    assert f"{state.status['readouts']:,}" in text and f"{state.status['hits']:,}" in text
    assert any(line.startswith("lost readouts") and line.endswith("!") for line in lines)


def test_a_saved_run_and_a_reference(tmp_path: Path, state: EngineState) -> None:
    from astropix_nbmonitor import histio

    saved = histio.load(histio.save_state(state, tmp_path / "run.json"))
    assert summary_text(saved).splitlines()[1:] == state.status.text_block()
    png = render_png(state, reference=saved)
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_snapshot_object_shows_as_an_image(tmp_path: Path, state: EngineState) -> None:
    snap = snapshot.snapshot(state, dpi=40)
    assert snap._repr_png_() == snap.png
    bundle = snap._repr_mimebundle_()
    assert set(bundle) == {"image/png", "text/plain"} and bundle["text/plain"] == snap.text
    path = snap.save(tmp_path / "snap.png")
    assert path.read_bytes() == snap.png
    assert path.with_suffix(".txt").read_text(encoding="utf-8").startswith("AstroPix monitor")


def test_pyplot_state_is_left_alone(state: EngineState) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    before = sys.modules["matplotlib.pyplot"].get_fignums() if had_pyplot else None
    render_png(state, dpi=30)
    if had_pyplot:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == before
    else:
        assert "matplotlib.pyplot" not in sys.modules


def test_an_mplhep_style(state: EngineState) -> None:
    pytest.importorskip("mplhep", reason="mplhep is not installed")
    assert render_png(state, dpi=30, style="ROOT").startswith(PNG_SIGNATURE)
    with pytest.raises(ValueError, match="no style"):
        render_png(state, style="NoSuchStyle")


def test_missing_matplotlib_names_the_extra(state: EngineState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"matplotlib: pip install 'astropix-nbmonitor\[files\]'"):
        render_png(state)
