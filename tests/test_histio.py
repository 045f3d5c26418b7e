"""Tests of astropix_nbmonitor.histio: save a state to .json/.zip/.h5/.root and load it back."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from astropix_nbmonitor import AstroPix4Simulator, MonitorEngine
from astropix_nbmonitor import histio
from astropix_nbmonitor.engine import EngineState

FORMATS = [".json", ".zip", ".h5", ".hdf5", ".root"]


@pytest.fixture(scope="module")
def engine() -> MonitorEngine:
    eng = MonitorEngine(port=0)
    sim = AstroPix4Simulator(seed=3, hits_per_readout=2.0, chip_ids=(0, 3), faults={"split": 0.05})
    eng.replay(sim.generate(2000).records)
    return eng


@pytest.fixture(scope="module")
def state(engine: MonitorEngine) -> EngineState:
    return engine.state()


def needs(extension: str) -> None:
    if extension in (".h5", ".hdf5"):
        pytest.importorskip("h5py", reason="the files extra (h5py) is not installed")
    if extension == ".root":
        pytest.importorskip("uproot", reason="the files extra (uproot) is not installed")


@pytest.mark.parametrize("extension", FORMATS)
def test_save_then_load_gives_equal_histograms(tmp_path: Path, state: EngineState, extension: str) -> None:
    needs(extension)
    path = histio.save_state(state, tmp_path / f"run{extension}", metadata={"note": "µ-beam", "run": 7})
    saved = histio.load(path)
    assert list(saved.histograms) == list(state.histograms)
    for name, hist in state.histograms.items():
        got = saved.histograms[name]
        assert got == hist, name
        assert got.storage_type is hist.storage_type, name
        assert [a.label for a in got.axes] == [a.label for a in hist.axes], name
        np.testing.assert_array_equal(got.view(flow=True), hist.view(flow=True))
    assert saved.status == state.status.as_dict()
    assert saved.status_table()["readouts"] == 2000
    assert saved.metadata["note"] == "µ-beam" and saved.metadata["run"] == 7
    assert saved.metadata["chips"] == [0, 3]
    assert saved.metadata["state_seq"] == state.seq
    assert saved.metadata["format"] == histio.FORMAT
    assert saved.hit_map == state.hit_map and saved.tot_hist == state.tot_hist


@pytest.mark.parametrize("extension", [".json", ".root"])
def test_save_an_engine_stores_its_address_and_the_apx_header(
    tmp_path: Path, engine: MonitorEngine, extension: str
) -> None:
    needs(extension)
    header = {"readout_uid": 4000, "configuration": {"vinj": 0.3}}
    saved = histio.load(histio.save(engine, tmp_path / f"e{extension}", header=header))
    assert saved.metadata["address"] == {"group": "127.0.0.1", "port": engine.port}
    assert saved.metadata["apx_header"] == header
    assert saved.status["readouts"] == engine.num_readouts


def test_root_file_holds_th1d_and_th2d_a_root_user_opens(tmp_path: Path, state: EngineState) -> None:
    uproot = pytest.importorskip("uproot", reason="the files extra (uproot) is not installed")
    path = histio.save_state(state, tmp_path / "run.root")
    with uproot.open(path) as f:
        classes = {key.split(";")[0]: cls for key, cls in f.classnames().items()}
        assert classes["hit_map"] == "TH2D"
        assert classes["tot_hist"] == "TH1D"
        assert classes["chip_hit_map_chip0"] == classes["chip_hit_map_chip3"] == "TH2D"
        assert classes["chip_tot_hist_chip3"] == "TH1D"
        assert "chip_hit_map_chip1" not in classes  # no hits on chip 1
        assert classes["status"] == classes["metadata"] == "TObjString"
        hit_map = f["hit_map"]
        np.testing.assert_array_equal(hit_map.values(), state.hit_map.values())
        assert hit_map.values().shape == (16, 35)
        np.testing.assert_array_equal(hit_map.axis(0).edges(), np.arange(17))
        tot = f["tot_hist"]
        np.testing.assert_array_equal(tot.values(flow=True), state.tot_hist.view(flow=True))
        np.testing.assert_allclose(tot.axis().edges(), np.linspace(0, 500, 100))
        np.testing.assert_array_equal(f["chip_hit_map_chip3"].values(), state.chip_hit_map(3).values())
        assert json.loads(str(f["status"]))["readouts"] == 2000


def test_a_root_file_of_only_th1_th2_loads_by_name(tmp_path: Path, state: EngineState) -> None:
    uproot = pytest.importorskip("uproot", reason="the files extra (uproot) is not installed")
    path = tmp_path / "plain.root"
    with uproot.recreate(path) as f:
        f["tot"] = np.histogram(np.array([1.0, 2.0, 2.5]), bins=[0.0, 2.0, 4.0])
    saved = histio.load(path)
    assert list(saved.histograms) == ["tot"]
    assert saved.histograms["tot"].values().tolist() == [1.0, 2.0]
    assert saved.status == {} and saved.metadata == {}


def test_unknown_extension_and_foreign_files(tmp_path: Path, state: EngineState) -> None:
    with pytest.raises(ValueError, match="unknown extension"):
        histio.save_state(state, tmp_path / "run.csv")
    other = tmp_path / "other.json"
    other.write_text('{"format": "something else", "histograms": {}}')
    with pytest.raises(ValueError, match="not written by"):
        histio.load(other)
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a saved state"):
        histio.load(bad)
    with pytest.raises(TypeError, match="JSON"):
        histio.save_state(state, tmp_path / "m.json", metadata={"when": object()})


@pytest.mark.parametrize(("extension", "package"), [(".h5", "h5py"), (".root", "uproot")])
def test_a_missing_optional_package_names_the_extra(
    tmp_path: Path, state: EngineState, monkeypatch: pytest.MonkeyPatch, extension: str, package: str
) -> None:
    # A None entry in sys.modules makes "import h5py" raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, package, None)
    with pytest.raises(ImportError, match=rf"{package}.*pip install 'astropix-nbmonitor\[files\]'"):
        histio.save_state(state, tmp_path / f"x{extension}")
    with pytest.raises(ImportError, match=r"astropix-nbmonitor\[files\]"):
        histio.load(tmp_path / f"x{extension}")
