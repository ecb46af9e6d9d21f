"""``fastmtl bench study`` and ``bench report``: end to end on tiny settings, and the summary
(Δm, time ratios, Ranking Similarity) on a hand-made result table."""

from __future__ import annotations

import json
import math

import pytest

import fastmtl
from fastmtl.bench.report import write_report
from fastmtl.bench.study import study_methods, summarise
from fastmtl.cli import main


def test_study_methods_default_and_selection():
    methods = study_methods()
    names = [n for n, _ in methods]
    assert names[0] == "ew"
    assert "mean" not in names and "sum" not in names  # aliases of EW
    combiners = {m for m in fastmtl.available_methods() if m not in ("mean", "sum")}
    assert {n for n, k in methods if k == "combiner"} == combiners
    assert {n for n, k in methods if k == "balancer"} == set(
        fastmtl.balancers.available_balancers())
    assert study_methods(["mgda", "famo"]) == [("ew", "combiner"), ("mgda", "combiner"),
                                               ("famo", "balancer")]
    with pytest.raises(ValueError, match="unknown method"):
        study_methods(["nope"])


def _check_run_dir(out, n_runs, tasks):
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == n_runs
    assert res["environment"]["torch"] and "bench study" in res["environment"]["command"]
    assert res["config"]["seeds"] == [0]
    assert [t["name"] for t in res["tasks"]] == tasks
    summary = res["summary"]
    for row in summary["methods"].values():
        for lv in row["levels"].values():
            assert math.isfinite(lv["delta_m"]["mean"])
            assert lv["time_ratio_to_ew"]["mean"] > 0
            assert 0.0 <= lv["identifiers"]["fd"]["mean"] <= 1.0
    for r in res["runs"]:
        if r["kind"] != "single":
            records = (out / r["monitor"]).read_text().splitlines()
            assert records and all(0.0 <= json.loads(x)["fd"] <= 1.0 for x in records)
    report = (out / "report.md").read_text()
    assert "Δm % (parameter)" in report and "Kendall τ" in report
    for png in ("fd_curves.png", "step_time.png", "identifiers_vs_dm.png"):
        assert (out / png).stat().st_size > 1000
    return res


def test_cli_study_multidigits_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["bench", "study", "--quick", "--methods", "mgda,rlw", "--steps", "3",
                 "--record-every", "1", "--n-train", "64", "--n-test", "32", "--batch", "16",
                 "--out", str(out), "--no-progress"]) == 0
    res = _check_run_dir(out, 3 + 3 * 2, ["left", "right", "parity"])
    assert set(res["summary"]["methods"]) == {"ew", "mgda", "rlw"}
    # EW is the same update at both levels: identical models, identical metrics.
    ew = res["summary"]["methods"]["ew"]["levels"]
    for key, stat in ew["parameter"]["metrics"].items():
        assert stat["mean"] == pytest.approx(ew["feature"]["metrics"][key]["mean"], abs=1e-9)
    assert "report:" in capsys.readouterr().out


def test_cli_study_scenes_and_report_rebuild(tmp_path):
    out = tmp_path / "scenes"
    assert main(["bench", "study", "--dataset", "scenes", "--quick", "--methods", "ew",
                 "--levels", "feature", "--steps", "2", "--record-every", "1",
                 "--n-train", "8", "--n-test", "4", "--batch", "4", "--out", str(out),
                 "--no-progress", "--no-report"]) == 0
    assert not (out / "report.md").exists()
    assert main(["bench", "report", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["runs"]) == 3 + 1
    metrics = res["summary"]["methods"]["ew"]["levels"]["feature"]["metrics"]
    assert {"segmentation/miou", "depth/abs_err", "normal/angle_mean"} <= set(metrics)
    assert (out / "report.md").exists() and (out / "fd_curves.png").exists()


def test_cli_errors_exit_2(tmp_path, capsys):
    assert main(["bench", "report", str(tmp_path)]) == 2
    assert "results.json" in capsys.readouterr().err
    assert main(["bench", "study", "--dataset", "nyuv2", "--root", str(tmp_path),
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    assert "image/<i>.npy" in capsys.readouterr().err


def _hand_results():
    """Two tasks (accuracy up, error down), one seed, single-task baselines 0.8 and 2.0."""
    def run(method, level, acc, err, t, fd):
        return {"kind": "combiner", "method": method, "level": level, "seed": 0,
                "metrics": {"a": {"accuracy": acc}, "b": {"abs_err": err}},
                "step_time_s": t, "identifiers": {"fd": fd, "mean_cosine": -fd,
                                                  "conflict_fraction": 0.5,
                                                  "magnitude_similarity": fd}}
    runs = [
        {"kind": "single", "task": "a", "seed": 0, "metrics": {"a": {"accuracy": 0.8}},
         "step_time_s": 1.0},
        {"kind": "single", "task": "b", "seed": 0, "metrics": {"b": {"abs_err": 2.0}},
         "step_time_s": 1.0},
        run("ew", "parameter", 0.8, 2.2, 2.0, 0.2),     # Δm: (0 + 10) / 2 = 5
        run("mgda", "parameter", 0.88, 2.0, 3.0, 0.5),  # Δm: (-10 + 0) / 2 = -5
        run("pcgrad", "parameter", 0.72, 2.0, 5.0, 0.1),  # Δm: (10 + 0) / 2 = 5 (tie)
    ]
    return {"runs": runs, "tasks": [{"name": "a"}, {"name": "b"}],
            "config": {"levels": ["parameter"]}}


def test_summary_delta_m_time_ratio_and_ranking_by_hand():
    s = summarise(_hand_results())
    rows = s["methods"]
    assert rows["ew"]["levels"]["parameter"]["delta_m"]["mean"] == pytest.approx(5.0)
    assert rows["mgda"]["levels"]["parameter"]["delta_m"]["mean"] == pytest.approx(-5.0)
    assert rows["pcgrad"]["levels"]["parameter"]["delta_m_per_task"]["a"]["mean"] == \
        pytest.approx(10.0)
    assert rows["mgda"]["levels"]["parameter"]["time_ratio_to_ew"]["mean"] == pytest.approx(1.5)
    rs = s["ranking_similarity"]["parameter"]
    # FD ranks mgda > ew > pcgrad; Δm ranks mgda best, ew and pcgrad tied: all pairs that
    # are not tied agree, so tau_b = 2 / sqrt(3 * 2).
    assert rs["fd"]["kendall_tau"] == pytest.approx(2 / math.sqrt(6))
    assert rs["mean_cosine"]["kendall_tau"] == pytest.approx(-2 / math.sqrt(6))
    assert rs["conflict_fraction"]["kendall_tau"] == 0.0  # a constant identifier
    assert s["single_task_step_time_s"]["mean"] == pytest.approx(2.0)


def test_report_from_hand_results(tmp_path):
    res = _hand_results()
    res["config"].update(dataset="toy", backbone="resnet18", width=8, stem_stride=1, lr=1e-3,
                         batch=4, steps=1, seeds=[0], device="cpu", threads=1)
    res["environment"] = {"command": "fastmtl bench study --toy", "torch": "x"}
    (tmp_path / "results.json").write_text(json.dumps(res))
    text = open(write_report(str(tmp_path))).read()
    assert "fastmtl bench study --toy" in text
    assert "| `mgda` | combiner | -5.00 |" in text
    assert "(unfinished run)" in text



def test_bench_step_torchvision_backbone():
    import torch

    from fastmtl.bench.step import bench_step

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: extra threads only spin
    try:
        t_plain, rows, plain_mb = bench_step(("mean",), batch=2, size=16, width=8,
                                             repeats=1, backbone="mobilenet",
                                             log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    assert t_plain > 0
    cases = {"feature", "fork", "parameter loop", "parameter batched"}
    assert set(rows[0].ratios) == cases
    assert all(r > 0 for r in rows[0].ratios.values())
    if plain_mb is not None:  # Linux: every case has a measured peak
        assert set(rows[0].peak_mb) == cases


def test_peak_memory_sees_a_temporary_allocation():
    import torch

    from fastmtl.bench.step import PeakMemory, peak_memory_of

    meter = PeakMemory(torch.device("cpu"))
    if not meter.available:
        pytest.skip("no /proc peak-RSS reset on this platform")

    def allocate(n):
        return lambda: torch.ones(n).sum()  # a temporary of 4 n bytes, freed on return

    small = peak_memory_of(allocate(1_000), torch.device("cpu"), meter)
    big = peak_memory_of(allocate(16 * 2**20), torch.device("cpu"), meter)  # 64 MiB
    assert 56 < big < 80
    assert small < 8
