"""The command line, end to end on tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastmtl.cli import build_parser, main


def test_bench_combine_tiny(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["bench", "combine", "--T", "2,3", "--P", "5000", "--repeats", "1",
                 "--no-peers", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("gram", "mean", "sum", "pcgrad", "mgda", "cagrad", "speed-up"):
        assert name in text
    data = json.loads(out.read_text())
    assert [r["T"] for r in data["combine"]] == [2, 3]
    assert all(r["ratios"]["gram"] > 0 for r in data["combine"])
    solvers = {"pcgrad", "mgda", "cagrad", "imtlg", "alignedmtl", "config", "gradvac", "nashmtl",
               "upgrad", "dualproj"}
    assert {r["method"] for r in data["solvers"]} == solvers
    assert data["environment"]["torch"]


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "fastmtl", "--help"], capture_output=True,
                          text=True, check=True)
    assert "bench" in proc.stdout


def test_bad_arguments_exit_with_usage():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "combine", "--T", "a,b"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench"])


def test_bench_step_quick(tmp_path, capsys, monkeypatch):
    from fastmtl.bench import step

    # Keep the test fast: a tiny model, one method, one repetition.
    original = step.bench_step
    monkeypatch.setattr(step, "bench_step", lambda **kw: original(
        methods=("mgda",), device=kw["device"], batch=2, size=16, width=8, repeats=1))
    out = tmp_path / "s.json"
    assert main(["bench", "step", "--quick", "--json", str(out)]) == 0
    assert "parameter batched" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["steps"][0]["method"] == "mgda"
    assert set(data["steps"][0]["ratios"]) == {"feature", "fork", "parameter loop",
                                               "parameter batched"}


def test_bench_fd_tiny(tmp_path, capsys):
    out = tmp_path / "fd.json"
    assert main(["bench", "fd", "--shape", "3,2,4,8,8", "--repeats", "1", "--json",
                 str(out)]) == 0
    assert "fd mean / abs-sum" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["fd"]["shape"] == [3, 2, 4, 8, 8]
    ratios = data["fd"]["ratios"]
    assert {"fd mean", "fd weighted", "fd map (reduce=none)",
            "pure-PyTorch reference (float64)"} <= set(ratios)
    assert all(r > 0 for r in ratios.values())


def test_time_ratio_alternates_calls_and_divides_medians(monkeypatch):
    # A fake clock: each call of fn takes 3 ticks, each baseline call 1, so the ratio is 3
    # exactly, whatever this machine's speed; the log checks the calls alternate.
    from fastmtl.bench import combine as bench

    clock = [0.0]
    calls: list[str] = []

    def tick(name: str, cost: float):
        def f():
            calls.append(name)
            clock[0] += cost
        return f

    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    ratio = bench.time_ratio(tick("fn", 3.0), tick("base", 1.0), bench.torch.device("cpu"),
                             repeats=4, budget_s=1e9)
    assert ratio == 3.0
    assert calls == ["fn", "base"] + ["base", "fn"] * 4
