r"""``fastmtl bench study``: every method at the parameter and the feature level, several seeds.

For each seed the study trains

- one single-task model per task (the baselines of :math:`\Delta m`);
- for every method (each registered combiner, ``ew`` = equal weights included, and each loss
  balancer) one multi-task model at the **parameter level** (per-task gradients of the shared
  encoder's parameters, combined: ``fastmtl.backward(losses, shared=encoder.parameters(),
  ...)``) and one at the **feature level** (per-task gradients of the shared representation
  ``z``, combined and sent once through the encoder: ``fastmtl.backward(losses, features=z,
  ...)``).

All runs of a seed share the initial weights, the data order and the optimiser (Adam). Each run
is evaluated on the held-out split with the task metrics of :mod:`fastmtl.bench.tasks`;
:math:`\Delta m` is computed per task against the single-task baselines (mean over seeds) with
:func:`fastmtl.metrics.delta_m`, then averaged over tasks (the LibMTL convention, so every task
weighs the same whatever its number of metrics). Time per training step is the median wall time
of the run's steps (data indexing, forward, backward, combine, optimiser step), reported as a
ratio to EW at the same level of the same seed.

During training :class:`fastmtl.Monitor` records, every ``record_every`` steps, the feature
disentanglement (FD) of the unweighted per-task gradients w.r.t. ``z``, and the gradient
conflict and magnitude similarity of the per-task gradients of the level (encoder parameters
at the parameter level, ``z`` at the feature level). For combiners at the feature level the
monitor is attached to ``fastmtl.backward`` (no extra pass); elsewhere the feature gradients
for FD are taken by an extra backward through the heads only, on record steps only, and left
out of the step time. For balancers the Gram matrix of the weighted gradients is mapped back
to the unweighted one, so every method's identifiers describe the raw task gradients.
Each identifier is averaged over the records of a run, then over seeds, and the Ranking
Similarity (:func:`fastmtl.metrics.ranking_similarity`, Kendall's tau-b) of its ranking of the
methods against the ranking by :math:`\Delta m` is reported per level.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor

from .. import autograd as fa
from ..combiners import available_methods
from .data import MultiTaskData, load_dataset
from .models import MultiTaskNet, count_parameters, predict
from .tasks import HIGHER_IS_BETTER, task_loss, task_metrics

__all__ = ["StudyConfig", "study_methods", "run_study", "preset", "LEVELS"]

LEVELS = ("parameter", "feature")
# Combiner names that are aliases or scalings of EW: not trained twice.
_EW_ALIASES = ("mean", "sum")


@dataclass
class StudyConfig:
    """Everything that defines a study (written into ``results.json``)."""

    dataset: str = "multidigits"
    backbone: str = "resnet18"
    width: int = 16
    stem_stride: int = 1
    hidden: int = 64
    n_train: int | None = None
    n_test: int | None = None
    steps: int = 300
    batch: int = 64
    lr: float = 1e-3
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    methods: list[str] = field(default_factory=list)
    levels: list[str] = field(default_factory=lambda: list(LEVELS))
    record_every: int = 10
    device: str = "cpu"
    root: str | None = None
    threads: int | None = None


def preset(dataset: str, quick: bool) -> StudyConfig:
    """The default (or ``--quick``) configuration of a data set, sized for a 2-core CPU."""
    if dataset == "multidigits":
        cfg = StudyConfig(dataset, width=8, stem_stride=1, n_train=4000, n_test=1000,
                          steps=150, batch=32, lr=2e-3, seeds=[0, 1], record_every=10)
        if quick:
            cfg = replace(cfg, width=8, n_train=512, n_test=256, steps=25, batch=32, seeds=[0],
                          record_every=5)
    elif dataset == "scenes":
        cfg = StudyConfig(dataset, width=8, stem_stride=2, hidden=16, n_train=1200,
                          n_test=200, steps=100, batch=8, lr=2e-3, seeds=[0, 1],
                          record_every=10)
        if quick:
            cfg = replace(cfg, width=8, n_train=128, n_test=64, steps=15, batch=8, seeds=[0],
                          record_every=5)
    else:  # nyuv2 / cityscapes: full-size images, meant for a GPU
        cfg = StudyConfig(dataset, width=64, stem_stride=2, hidden=128, steps=2000, batch=8,
                          seeds=[0, 1, 2], record_every=50)
        if quick:
            cfg = replace(cfg, width=16, n_train=64, n_test=32, steps=20, batch=4, seeds=[0],
                          record_every=5)
    return cfg


def _balancer_names() -> list[str]:
    try:
        from ..balancers import available_balancers
    except ImportError:  # pragma: no cover - the balancers are part of the package
        return []
    return list(available_balancers())


def study_methods(requested: list[str] | None = None) -> list[tuple[str, str]]:
    """``(name, kind)`` pairs, kind ``"combiner"`` or ``"balancer"``; ``ew`` first.

    Default: every registered combiner (without the EW aliases ``mean``/``sum``) and every
    registered balancer. A name registered as both is taken as the combiner; prefix
    ``balancer:`` to force the balancer.
    """
    combiners = [m for m in available_methods() if m not in _EW_ALIASES]
    balancers = _balancer_names()
    if not requested:
        names = ["ew"] + [m for m in combiners if m != "ew"] + [f"balancer:{b}" for b in balancers]
    else:
        names = list(requested)
        if "ew" not in names:
            names.insert(0, "ew")  # the reference of the time ratios
    out: list[tuple[str, str]] = []
    for n in names:
        key = n.lower()
        if key.startswith("balancer:"):
            b = key.split(":", 1)[1]
            if b not in balancers:
                raise ValueError(f"unknown balancer {b!r}; available: {', '.join(balancers)}")
            item = (b if b not in combiners else key, "balancer")
        elif key in combiners or key == "ew":
            item = (key, "combiner")
        elif key in balancers:
            item = (key, "balancer")
        else:
            raise ValueError(f"unknown method {n!r}; combiners: {', '.join(combiners)}; "
                             f"balancers: {', '.join(balancers) or '(none)'}")
        if item not in out:
            out.append(item)
    return out


# ---- one training run -------------------------------------------------------------------


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _batches(n: int, batch: int, steps: int, seed: int):
    """Indices of ``steps`` mini-batches: reshuffled every epoch, the same for every method."""
    g = torch.Generator().manual_seed(10_000 + seed)
    perm, pos, epoch = torch.randperm(n, generator=g), 0, 0
    for _ in range(steps):
        if pos + batch > n:
            perm, pos, epoch = torch.randperm(n, generator=g), 0, epoch + 1
        yield perm[pos:pos + batch], epoch
        pos += batch


def _last_shared_layer(model: MultiTaskNet) -> list[Tensor]:
    enc = model.encoder
    core = enc[0] if isinstance(enc, torch.nn.Sequential) and hasattr(enc[0], "net") else enc
    last = core.net.layer4[-1] if hasattr(core.net, "layer4") else core.net[-1]
    return [p for p in last.parameters() if p.requires_grad]


def _make_balancer(name: str, n_tasks: int, model: MultiTaskNet):
    from ..balancers import make_balancer

    name = name.split(":", 1)[-1]
    options: dict = {"n_tasks": n_tasks}
    if name == "gradnorm":
        options["shared_layer"] = _last_shared_layer(model)
    try:
        return make_balancer(name, **options)
    except TypeError:  # a balancer without n_tasks
        options.pop("n_tasks")
        return make_balancer(name, **options)


def _make_monitor(path: str | None, every: int, n_tasks: int):
    """A :class:`fastmtl.Monitor` writing JSON Lines to ``path`` (None: no monitoring)."""
    if path is None:
        return None
    from .. import Monitor

    return Monitor(every=every, path=path)


def _attached(monitor, level: str | None, kind: str) -> bool:
    """Combiners at the feature level: the monitor is attached to ``fastmtl.backward``, which
    hands it the per-task feature gradients it already holds. Elsewhere it is fed by hand,
    with the *unweighted* per-task feature gradients (a backward through the heads only, on
    record steps, not timed), so that FD is measured on the same quantity for every method."""
    return monitor is not None and level == "feature" and kind == "combiner"


def _record(monitor, step: int, result, losses: list[Tensor], feature_grads) -> None:
    """One hand-fed record. For a balancer, ``fastmtl.backward`` combined the gradients of
    the weighted losses :math:`w_t L_t`; their Gram matrix is mapped back to the unweighted
    one, :math:`G_{ij} / (w_i w_j)`, so the cosines (unchanged) and the magnitude similarity
    describe the raw task gradients as for the combiners; the balancer's weights are
    recorded as the weights."""
    G, weights = result.gram, result.weights
    w = result.extras.get("loss_weights")
    if w is not None:
        w = w.detach().to(G.dtype).clamp_min(1e-12)
        G = G / torch.outer(w, w)
        weights = w
    monitor.record(step, feature_grads=feature_grads, G=G, weights=weights,
                   losses=[lo.detach() for lo in losses])


def _evaluate(model: MultiTaskNet, data: MultiTaskData, dev: torch.device) -> dict[str, dict]:
    outs = predict(model, data.x_test.to(dev))
    return {t.name: task_metrics(t, o, y) for t, o, y in
            zip(data.tasks, outs, data.y_test, strict=True)}


def train_run(cfg: StudyConfig, data: MultiTaskData, *, method: str | None, kind: str,
              level: str | None, seed: int, monitor_path: str | None = None,
              progress=None) -> dict:
    """Train one model and evaluate it. ``kind="single"`` trains ``data``'s only task with a
    plain backward; otherwise ``method`` is a combiner or balancer applied at ``level``."""
    dev = torch.device(cfg.device)
    torch.manual_seed(seed)
    model = MultiTaskNet(cfg.backbone, data.tasks, data.in_channels, width=cfg.width,
                         stem_stride=cfg.stem_stride, hidden=cfg.hidden).to(dev)
    T = len(data.tasks)
    params = list(model.parameters())
    balancer = None
    if kind == "balancer":
        balancer = _make_balancer(method, T, model).to(dev)
        params += [p for p in balancer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    monitor = _make_monitor(monitor_path, cfg.record_every, T) if kind != "single" else None
    gen = torch.Generator(device=dev).manual_seed(seed)  # random combiners (PCGrad, RGW)
    shared = list(model.encoder.parameters())
    times: list[float] = []
    last_epoch = 0
    x_all = data.x_train.to(dev)
    y_all = [y.to(dev) for y in data.y_train]
    for step, (idx, epoch) in enumerate(_batches(len(x_all), cfg.batch, cfg.steps, seed)):
        if balancer is not None and epoch != last_epoch and hasattr(balancer, "epoch_end"):
            balancer.epoch_end()  # DWA's per-epoch loss averages
        last_epoch = epoch
        _sync(dev)
        t0 = time.perf_counter()
        idx = idx.to(dev)
        x, ys = x_all[idx], [y[idx] for y in y_all]
        opt.zero_grad(set_to_none=True)
        z = model.encoder(x)
        outs = [model.head_output(t, z, x) for t in range(T)]
        losses = [task_loss(task, o, y) for task, o, y in zip(data.tasks, outs, ys, strict=True)]
        if kind == "single":
            losses[0].backward()
        else:
            attached = _attached(monitor, level, kind)
            record = monitor is not None and not attached and step % cfg.record_every == 0
            paused = 0.0
            feature_grads = None
            if record:
                # dL_t/dz of the unweighted losses: a backward through the heads only.
                t_fd = time.perf_counter()
                feature_grads = torch.stack([torch.autograd.grad(lo, z, retain_graph=True)[0]
                                             for lo in losses])
                _sync(dev)
                paused = time.perf_counter() - t_fd
            how = {"shared": shared} if level == "parameter" else {"features": z}
            what = {"combiner": method, "generator": gen} if kind == "combiner" else \
                {"balancer": balancer}
            result = fa.backward(losses, **how, **what,
                                 **({"monitor": monitor} if attached else {}))
            if record:
                t_rec = time.perf_counter()
                _record(monitor, step, result, losses, feature_grads)
                _sync(dev)
                paused += time.perf_counter() - t_rec
            t0 += paused
        opt.step()
        if balancer is not None and hasattr(balancer, "update") and method.endswith("famo"):
            with torch.no_grad():  # FAMO's post-step update on the same batch
                z2 = model.encoder(x)
                new = [task_loss(task, model.head_output(t, z2, x), ys[t])
                       for t, task in enumerate(data.tasks)]
            balancer.update(torch.stack(new))
        _sync(dev)
        times.append(time.perf_counter() - t0)
        if not all(math.isfinite(lo.item()) for lo in losses):
            raise FloatingPointError(f"{method} at the {level} level diverged at step {step}")
        if progress is not None:
            progress.update(1)
    if monitor is not None:
        monitor.close()
    metrics = _evaluate(model, data, dev)
    warm = times[min(3, len(times) - 1):]
    return {"metrics": metrics, "step_time_s": statistics.median(warm),
            "final_losses": [lo.item() for lo in losses],
            "encoder_parameters": count_parameters(model.encoder)}


# ---- the whole study --------------------------------------------------------------------

# Identifiers of the study: (record key, higher value = less interference?)
IDENTIFIERS = {
    "fd": True,                 # feature disentanglement
    "mean_cosine": True,        # gradient conflict: mean pairwise cosine
    "conflict_fraction": False,  # gradient conflict: share of pairs with cos < 0
    "magnitude_similarity": True,
}


def environment(cli_args: list[str] | None = None) -> dict:
    """Versions, threads, device and the exact command line (``fastmtl`` + ``cli_args`` when
    given, else rebuilt from ``sys.argv``)."""
    if cli_args is not None:
        command = shlex.join(["fastmtl", *cli_args])
    else:
        prog = os.path.basename(sys.argv[0]) if sys.argv else ""
        head = "python -m fastmtl" if prog == "__main__.py" else \
            "fastmtl" if prog == "fastmtl" else sys.argv[0] if sys.argv else ""
        command = " ".join([head] + [shlex.quote(a) for a in sys.argv[1:]])
    info = {"python": sys.version.split()[0], "command": command,
            "argv": list(sys.argv), "threads": torch.get_num_threads(),
            "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for pkg in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "matplotlib",
                "fastmtl"):
        try:
            info[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            info[pkg] = None
    from .. import __version__, native_available

    info["fastmtl_source"] = __version__
    info["native"] = native_available()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _flat(metrics: dict[str, dict]) -> dict[str, float]:
    return {f"{task}/{k}": v for task, m in metrics.items() for k, v in m.items()}


def _delta_m(metrics: dict[str, dict], baselines: dict[str, dict]) -> dict:
    """Δm per task (mean over that task's metrics), and their mean over tasks."""
    from ..metrics import delta_m

    per_task = {}
    for task, m in metrics.items():
        keys = [k for k in m if math.isfinite(m[k]) and baselines[task].get(k)]
        res = delta_m({k: m[k] for k in keys}, {k: baselines[task][k] for k in keys},
                      {k: HIGHER_IS_BETTER[k] for k in keys})
        per_task[task] = float(res)
    return {"per_task": per_task, "mean": statistics.fmean(per_task.values())}


def _mean_std(values: list[float]) -> dict:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1
            else 0.0, "n": len(vals)}


def _identifiers_of(path: str | None) -> dict[str, float]:
    """Mean of every identifier over a run's monitor records (JSON Lines)."""
    if path is None or not os.path.exists(path):
        return {}
    sums: dict[str, list[float]] = {}
    with open(path) as fh:
        for line in fh:
            rec = json.loads(line)
            for key in IDENTIFIERS:
                v = rec.get(key)
                if isinstance(v, (int, float)) and math.isfinite(v):
                    sums.setdefault(key, []).append(float(v))
    return {k: statistics.fmean(v) for k, v in sums.items()}


def summarise(results: dict) -> dict:
    """Per method and level: metrics, Δm, time ratio to EW, identifiers (mean over seeds);
    then the Ranking Similarity of every identifier against Δm, per level."""
    from ..metrics import ranking_similarity

    runs = results["runs"]
    tasks = [t["name"] for t in results["tasks"]]
    # Single-task baselines: mean over seeds, per metric.
    base: dict[str, dict] = {}
    for task in tasks:
        rows = [r["metrics"][task] for r in runs if r["kind"] == "single" and r["task"] == task]
        if rows:
            base[task] = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    ew_time = {(r["level"], r["seed"]): r["step_time_s"] for r in runs
               if r["kind"] != "single" and r["method"] == "ew"}
    single_time = {r["seed"]: sum(x["step_time_s"] for x in runs
                                  if x["kind"] == "single" and x["seed"] == r["seed"])
                   for r in runs if r["kind"] == "single"}
    table: dict[str, dict] = {}
    for r in runs:
        if r["kind"] == "single":
            continue
        row = table.setdefault(r["method"], {"kind": r["kind"], "levels": {}})
        lv = row["levels"].setdefault(r["level"], {"seeds": [], "dm": [], "time_ratio": [],
                                                    "step_time_s": [], "ident": [],
                                                    "metrics": []})
        lv["seeds"].append(r["seed"])
        lv["metrics"].append(_flat(r["metrics"]))
        if len(base) == len(tasks):
            lv["dm"].append(_delta_m(r["metrics"], base))
        ref = ew_time.get((r["level"], r["seed"]))
        lv["time_ratio"].append(r["step_time_s"] / ref if ref else None)
        lv["step_time_s"].append(r["step_time_s"])
        lv["ident"].append(r.get("identifiers", {}))
    summary: dict = {"baselines": base, "methods": {}, "ranking_similarity": {},
                     "single_task_step_time_s": _mean_std(list(single_time.values()))}
    for name, row in table.items():
        out = {"kind": row["kind"], "levels": {}}
        for level, lv in row["levels"].items():
            keys = lv["metrics"][0].keys()
            out["levels"][level] = {
                "seeds": lv["seeds"],
                "metrics": {k: _mean_std([m[k] for m in lv["metrics"]]) for k in keys},
                "delta_m": _mean_std([d["mean"] for d in lv["dm"]]),
                "delta_m_per_task": {t: _mean_std([d["per_task"][t] for d in lv["dm"]])
                                     for t in tasks} if lv["dm"] else {},
                "time_ratio_to_ew": _mean_std(lv["time_ratio"]),
                "step_time_s": _mean_std(lv["step_time_s"]),
                "identifiers": {k: _mean_std([i.get(k) for i in lv["ident"]])
                                for k in IDENTIFIERS},
            }
        summary["methods"][name] = out
    for level in LEVELS:
        rs = {}
        for key, hib in IDENTIFIERS.items():
            ident, dm = {}, {}
            for name, row in summary["methods"].items():
                lv = row["levels"].get(level)
                if lv and lv["identifiers"][key]["mean"] is not None and \
                        lv["delta_m"]["mean"] is not None:
                    ident[name] = lv["identifiers"][key]["mean"]
                    dm[name] = lv["delta_m"]["mean"]
            if len(ident) >= 2:
                res = ranking_similarity(ident, dm, higher_is_better=(hib, False))
                rs[key] = {"kendall_tau": res.kendall_tau, "spearman_rho": res.spearman_rho,
                           "top_k_overlap": res.top_k_overlap, "k": res.k,
                           "p_value": res.p_value, "n_methods": len(ident)}
        if rs:
            summary["ranking_similarity"][level] = rs
    return summary


def _write(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def run_study(cfg: StudyConfig, out_dir: str, *, progress: bool = True, log=print,
              cli_args: list[str] | None = None) -> dict:
    """Run the whole study into ``out_dir`` (``results.json``, ``monitor/*.jsonl``)."""
    from tqdm.auto import tqdm

    if cfg.threads is None and torch.device(cfg.device).type == "cpu":
        # One thread: on a shared or small CPU, intra-op threads spin against other
        # processes (measured here: 41 ms per step with 1 thread, 0.3-4 s with 2 under load).
        cfg.threads = 1
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    methods = study_methods(cfg.methods)
    for lv in cfg.levels:
        if lv not in LEVELS:
            raise ValueError(f"levels must be among {LEVELS}, got {lv!r}")
    os.makedirs(os.path.join(out_dir, "monitor"), exist_ok=True)
    results = {"config": asdict(cfg), "environment": environment(cli_args),
               "methods": [{"name": n, "kind": k} for n, k in methods], "runs": []}
    started = time.perf_counter()
    n_runs_per_seed = None
    for seed in cfg.seeds:
        data = load_dataset(cfg.dataset, seed=seed, root=cfg.root, n_train=cfg.n_train,
                            n_test=cfg.n_test)
        if n_runs_per_seed is None:
            results["tasks"] = [asdict(t) for t in data.tasks]
            results["data"] = {"n_train": len(data.x_train), "n_test": len(data.x_test),
                               "input_shape": list(data.x_train.shape[1:])}
            n_runs_per_seed = len(data.tasks) + len(methods) * len(cfg.levels)
            log(f"fastmtl bench study: {cfg.dataset}, {len(methods)} methods x "
                f"{len(cfg.levels)} levels + {len(data.tasks)} single-task baselines, seeds "
                f"{cfg.seeds}, {cfg.steps} steps each, backbone {cfg.backbone} (width "
                f"{cfg.width}) on {cfg.device}; writing {out_dir}")
        jobs = [("single", None, t, None) for t in range(len(data.tasks))]
        jobs += [(kind, name, None, level) for name, kind in methods for level in cfg.levels]
        bar = tqdm(total=len(jobs) * cfg.steps, desc=f"seed {seed}", unit="step",
                   disable=not progress, dynamic_ncols=True, mininterval=2.0)
        for kind, name, task_index, level in jobs:
            if kind == "single":
                sub = data.subset_tasks(task_index)
                bar.set_postfix_str(f"single-task {sub.tasks[0].name}")
                res = train_run(cfg, sub, method=None, kind="single", level=None, seed=seed,
                                progress=bar)
                res.update(kind="single", task=sub.tasks[0].name, method=None, level=None,
                           seed=seed)
            else:
                bar.set_postfix_str(f"{name} @ {level}")
                label = name.replace(":", "-")
                mon = os.path.join(out_dir, "monitor", f"{label}_{level}_seed{seed}.jsonl")
                if os.path.exists(mon):
                    os.remove(mon)
                res = train_run(cfg, data, method=name, kind=kind, level=level, seed=seed,
                                monitor_path=mon, progress=bar)
                res.update(kind=kind, method=name, level=level, seed=seed,
                           monitor=os.path.relpath(mon, out_dir) if os.path.exists(mon)
                           else None, identifiers=_identifiers_of(mon))
            results["runs"].append(res)
            results["elapsed_s"] = time.perf_counter() - started
            _write(os.path.join(out_dir, "results.json"), results)
        bar.close()
    results["summary"] = summarise(results)
    results["elapsed_s"] = time.perf_counter() - started
    _write(os.path.join(out_dir, "results.json"), results)
    log(f"done in {results['elapsed_s']:.0f} s: {os.path.join(out_dir, 'results.json')}")
    return results


def default_out_dir(dataset: str) -> str:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"study_{dataset}_{stamp}")


def run(args) -> dict:
    """Entry point of ``fastmtl bench study``."""
    cfg = preset(args.dataset, args.quick)
    overrides = {"backbone": args.backbone, "device": args.device, "root": args.root,
                 "steps": args.steps, "batch": args.batch, "width": args.width,
                 "n_train": args.n_train, "n_test": args.n_test, "lr": args.lr,
                 "record_every": args.record_every, "threads": args.threads}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if args.seeds is not None:
        cfg.seeds = list(args.seeds)
    if args.methods:
        cfg.methods = [m for m in args.methods.split(",") if m]
    if args.levels:
        cfg.levels = [lv for lv in args.levels.split(",") if lv]
    out = args.out or default_out_dir(args.dataset)
    results = run_study(cfg, out, progress=not args.no_progress,
                        cli_args=getattr(args, "cli_args", None))
    if not args.no_report:
        from .report import write_report

        path = write_report(out)
        print(f"report: {path}")
    return results
