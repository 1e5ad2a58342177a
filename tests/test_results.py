import json

import pytest

from labkit import results


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "r" / "result.json"
    results.write_json_atomic(path, {"status": "ok"})
    with pytest.raises(TypeError):
        results.write_json_atomic(path, {"status": object()})
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temporary left behind


def test_non_finite_numbers_become_null(tmp_path):
    path = tmp_path / "result.json"
    results.write_json_atomic(path, {"loss": float("nan"), "x": (1, float("inf"))})
    assert json.loads(path.read_text()) == {"loss": None, "x": [1, None]}


def test_load_returns_one_row_per_record_with_device(tmp_path):
    for config, device in [("a", "cpu"), ("b", "cuda")]:
        rec = {"run": {"profile": "smoke", "notebook": "01_x", "config": config}, "status": "ok",
               "env": {"device": device, "device_name": "NVIDIA H100 80GB HBM3", "device_count": 1},
               "params": {"train": {"precision": "32"}}, "summary": {"samples_per_s": 3.0}}
        results.save(rec, results.record_dir("smoke", "01_x", config, tmp_path))
    df = results.load(tmp_path, profile="smoke")
    assert list(df["config"]) == ["a", "b"]
    assert df.loc[0, "device"].startswith("CPU (smoke")
    assert df.loc[1, "device"] == "NVIDIA H100 80GB HBM3"
    assert (df["samples_per_s"] == 3.0).all()
    assert results.load(tmp_path, notebook="02_y").empty


def test_device_label_counts_gpus():
    assert results.device_label({"device": "cuda", "device_name": "NVIDIA H200", "device_count": 2}) == "2x NVIDIA H200"
