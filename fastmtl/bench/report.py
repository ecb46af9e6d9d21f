"""``fastmtl bench report RUN_DIR``: Markdown tables and PNG plots of a study run.

Writes into the run directory:

- ``report.md``: the configuration and exact command, the method table (Δm at each level, step
  time ratio to EW at each level, mean FD), the Ranking Similarity table, per-task metrics;
- ``fd_curves.png``: FD over training steps, one curve per method (mean over seeds), per level;
- ``step_time.png``: step time ratio to EW per method, both levels side by side;
- ``identifiers_vs_dm.png``: every identifier (mean over training) against Δm, per level.
"""

from __future__ import annotations

import json
import os
import statistics

from .study import IDENTIFIERS, LEVELS, summarise

__all__ = ["write_report", "load_results"]

_LABELS = {"fd": "FD", "mean_cosine": "gradient conflict (mean cosine)",
           "conflict_fraction": "gradient conflict (fraction of pairs with cos < 0)",
           "magnitude_similarity": "magnitude similarity"}


def load_results(run_dir: str) -> dict:
    """``results.json`` of a run directory, with its summary (recomputed if missing)."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no results.json in {run_dir!r}: run `fastmtl bench study` "
                                "with --out pointing there first")
    with open(path) as fh:
        results = json.load(fh)
    if "runs" not in results or "config" not in results:
        raise ValueError(f"{path!r} is not a study result (no 'runs'/'config')")
    if "summary" not in results:  # an unfinished run: summarise what is there
        results["summary"] = summarise(results)
    return results


def _fmt(stat: dict | None, digits: int = 2, pm: bool = True) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    text = f"{stat['mean']:+.{digits}f}" if digits == 2 and pm else f"{stat['mean']:.{digits}f}"
    if pm and stat.get("n", 0) > 1:
        text += f" ± {stat['std']:.{digits}f}"
    return text


def _method_table(summary: dict, levels: list[str]) -> list[str]:
    head = ["method", "kind"]
    head += [f"Δm % ({lv})" for lv in levels]
    if len(levels) == 2:
        head.append("Δm feature − parameter")
    head += [f"time / EW ({lv})" for lv in levels]
    head += [f"mean FD ({lv})" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in summary["methods"].items():
        lvs = row["levels"]
        cells = [f"`{name}`", row["kind"]]
        cells += [_fmt(lvs.get(lv, {}).get("delta_m")) for lv in levels]
        if len(levels) == 2:
            a = lvs.get(levels[0], {}).get("delta_m", {}).get("mean")
            b = lvs.get(levels[1], {}).get("delta_m", {}).get("mean")
            cells.append(f"{b - a:+.2f}" if a is not None and b is not None else "n/a")
        cells += [_fmt(lvs.get(lv, {}).get("time_ratio_to_ew"), 2, pm=False) for lv in levels]
        cells += [_fmt(lvs.get(lv, {}).get("identifiers", {}).get("fd"), 3, pm=False)
                  for lv in levels]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _rs_table(summary: dict) -> list[str]:
    rs = summary.get("ranking_similarity", {})
    levels = [lv for lv in LEVELS if lv in rs]
    if not levels:
        return ["(no Ranking Similarity: fewer than two methods with Δm and identifiers)"]
    head = ["identifier"] + [f"Kendall τ ({lv})" for lv in levels] + \
        [f"Spearman ρ ({lv})" for lv in levels] + [f"top-k overlap ({lv})" for lv in levels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in IDENTIFIERS:
        cells = [_LABELS[key]]
        for stat in ("kendall_tau", "spearman_rho", "top_k_overlap"):
            for lv in levels:
                v = rs[lv].get(key, {}).get(stat)
                cells.append("n/a" if v is None else f"{v:+.2f}" if stat != "top_k_overlap"
                             else f"{v:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    n = {lv: next(iter(rs[lv].values()))["n_methods"] for lv in levels}
    lines.append("")
    lines.append("Methods ranked per level: " + ", ".join(f"{lv}: {n[lv]}" for lv in levels)
                 + ". τ = 1: the identifier orders the methods exactly as Δm does (better "
                 "identifier value ↔ lower Δm); 0: no agreement; −1: reversed.")
    return lines


def _metrics_table(results: dict) -> list[str]:
    summary = results["summary"]
    keys = [f"{t}/{k}" for t, m in summary["baselines"].items() for k in m]
    if not keys:
        return []
    head = ["method", "level"] + [k.replace("/", " ") for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = summary["baselines"]
    lines.append("| single-task | — | " + " | ".join(
        f"{base[k.split('/')[0]][k.split('/', 1)[1]]:.4f}" for k in keys) + " |")
    for name, row in summary["methods"].items():
        for lv, st in row["levels"].items():
            vals = [st["metrics"].get(k, {}).get("mean") for k in keys]
            lines.append(f"| `{name}` | {lv} | " + " | ".join(
                "n/a" if v is None else f"{v:.4f}" for v in vals) + " |")
    return lines


def _curves(results: dict, run_dir: str) -> dict[tuple[str, str], tuple[list, list]]:
    """Mean FD per step over seeds, keyed by (method, level)."""
    acc: dict[tuple[str, str], dict[int, list[float]]] = {}
    for r in results["runs"]:
        if r.get("kind") == "single" or not r.get("monitor"):
            continue
        path = os.path.join(run_dir, r["monitor"])
        if not os.path.isfile(path):
            continue
        with open(path) as fh:
            for line in fh:
                rec = json.loads(line)
                if isinstance(rec.get("fd"), (int, float)):
                    acc.setdefault((r["method"], r["level"]), {}).setdefault(
                        rec["step"], []).append(rec["fd"])
    return {k: (sorted(v), [statistics.fmean(v[s]) for s in sorted(v)]) for k, v in acc.items()}


def _plots(results: dict, run_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    levels = [lv for lv in LEVELS if lv in results["config"]["levels"]]
    methods = list(summary["methods"])
    cmap = plt.get_cmap("tab20")
    color = {m: cmap(i % 20) for i, m in enumerate(methods)}
    written = []

    curves = _curves(results, run_dir)
    fig, axes = plt.subplots(1, len(levels), figsize=(6 * len(levels), 4.2), squeeze=False,
                             sharey=True)
    for ax, lv in zip(axes[0], levels, strict=True):
        for m in methods:
            if (m, lv) in curves:
                xs, ys = curves[(m, lv)]
                ax.plot(xs, ys, label=m, color=color[m], lw=1.4)
        ax.set_title(f"FD during training ({lv} level)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("feature disentanglement")
    if curves:
        axes[0][-1].legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    path = os.path.join(run_dir, "fd_curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(methods) + 2), 4.2))
    width = 0.8 / max(1, len(levels))
    for j, lv in enumerate(levels):
        vals = [summary["methods"][m]["levels"].get(lv, {}).get("time_ratio_to_ew", {})
                .get("mean") for m in methods]
        ax.bar([i + (j - (len(levels) - 1) / 2) * width for i in range(len(methods))],
               [v if v is not None else 0.0 for v in vals], width, label=f"{lv} level")
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("step time / EW step time (same level)")
    ax.set_title("Time per training step")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(run_dir, "step_time.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    keys = list(IDENTIFIERS)
    fig, axes = plt.subplots(len(levels), len(keys), figsize=(3.6 * len(keys), 3.3 * len(levels)),
                             squeeze=False)
    rs = summary.get("ranking_similarity", {})
    for i, lv in enumerate(levels):
        for j, key in enumerate(keys):
            ax = axes[i][j]
            for m in methods:
                st = summary["methods"][m]["levels"].get(lv)
                if not st:
                    continue
                x, y = st["identifiers"][key]["mean"], st["delta_m"]["mean"]
                if x is None or y is None:
                    continue
                ax.scatter(x, y, color=color[m], s=22)
                ax.annotate(m, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
            tau = rs.get(lv, {}).get(key, {}).get("kendall_tau")
            ax.set_title(f"{lv}: τ = {tau:+.2f}" if tau is not None else lv, fontsize=9)
            ax.set_xlabel(_LABELS[key], fontsize=8)
            if j == 0:
                ax.set_ylabel("Δm (%)")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(run_dir, "identifiers_vs_dm.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written


def write_report(run_dir: str) -> str:
    """Write ``report.md`` and the PNG plots into ``run_dir``; returns the report's path."""
    results = load_results(run_dir)
    summary = results["summary"]
    cfg, env = results["config"], results["environment"]
    levels = [lv for lv in LEVELS if lv in cfg["levels"]]
    complete = "elapsed_s" in results and "summary" in results
    n_single = sum(1 for r in results["runs"] if r["kind"] == "single")
    plots = _plots(results, run_dir)
    tasks = ", ".join(f"{t['name']} ({t.get('kind', '?')})" for t in results.get("tasks", []))
    out = [f"# fastmtl bench study: {cfg['dataset']}", ""]
    out += [f"Command: `{env.get('command', '?')}`", "",
            f"- data: {cfg['dataset']}, tasks: {tasks}; {results.get('data', {})}",
            f"- backbone: {cfg['backbone']} (width {cfg['width']}, stem stride "
            f"{cfg['stem_stride']}), Adam lr {cfg['lr']}, batch {cfg['batch']}, "
            f"{cfg['steps']} steps per run, seeds {cfg['seeds']}, device {cfg['device']}, "
            f"{cfg.get('threads')} thread(s)",
            f"- runs: {len(results['runs'])} ({n_single} single-task), "
            f"{results.get('elapsed_s', float('nan')):.0f} s in all"
            + ("" if complete else " (unfinished run)"),
            f"- versions: torch {env.get('torch')}, torchvision {env.get('torchvision')}, "
            f"numpy {env.get('numpy')}, fastmtl {env.get('fastmtl_source')} (native "
            f"{env.get('native')}), Python {env.get('python')}; {env.get('time_utc', '')}",
            "",
            "## Methods",
            "",
            "Δm: mean relative change of the task metrics against the single-task baselines "
            "(Maninis et al. 2019; per task, then averaged over tasks), in percent, mean ± std "
            "over seeds; **lower is better**. Time: median step time of the run divided by "
            "EW's at the same level and seed. FD: feature disentanglement of the per-task "
            "gradients w.r.t. the shared representation, mean over the monitor records.",
            ""]
    out += _method_table(summary, levels)
    out += ["", "## Ranking Similarity of the identifiers against Δm", "",
            "Each identifier is averaged over a run's records (then over seeds); the methods "
            "ranked by it are compared with the methods ranked by Δm "
            "(`fastmtl.metrics.ranking_similarity`). Orientation: high FD, high mean cosine, "
            "low conflict fraction and high magnitude similarity count as *less* "
            "interference, expected to go with a *lower* Δm.", ""]
    out += _rs_table(summary)
    out += ["", "## Per-task metrics (mean over seeds)", ""]
    out += _metrics_table(results)
    st = summary.get("single_task_step_time_s", {})
    if st.get("mean"):
        ew = summary["methods"].get("ew", {}).get("levels", {})
        cmp = ", ".join(f"EW {lv} {ew[lv]['step_time_s']['mean'] * 1e3:.0f} ms"
                        for lv in levels if lv in ew)
        out += ["", f"Step time: all single-task models together "
                f"{st['mean'] * 1e3:.0f} ms per step; {cmp}."]
    out += ["", "## Plots", ""]
    out += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots]
    out.append("")
    path = os.path.join(run_dir, "report.md")
    with open(path, "w") as fh:
        fh.write("\n".join(out))
    return path

