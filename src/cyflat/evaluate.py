"""Evaluate a trained run: sigma over held-out moduli for the network, Fubini-Study and H = 1.

``evaluate_run(run_dir)`` reloads a finished or interrupted run from its config and last
checkpoint.  Results go to ``RUN_DIR/summary.json`` and plots ``training.png`` (loss and
validation sigma against step) and ``sigma_moduli.png`` (a heat map over the moduli
region for one complex modulus, sigma against each |modulus| for several).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .config import Config, load_config
from .metric import sigma_from_eta

__all__ = ["evaluate_params", "evaluate_run", "eval_moduli"]


def eval_moduli(cfg: Config, problem, grid: int | None = None) -> np.ndarray:
    """Held-out moduli (G, m): a grid for one complex modulus, random draws for several."""
    mod = cfg.moduli
    m = problem.variety.num_params
    center = problem.center
    if mod.region == "point" or m == 0:
        return center[None, :]
    grid = grid or cfg.eval.grid
    if m == 1:
        half = mod.half_width if mod.region == "box" else mod.radius
        # cell centres: never the centre line of the box, never the boundary
        ticks = (np.arange(grid) + 0.5) / grid * 2 * half - half
        re, im = np.meshgrid(ticks, ticks, indexing="xy")
        pts = (re + 1j * im).reshape(-1)
        if mod.region == "disk":
            pts = pts[np.abs(pts) <= mod.radius]
        pts = pts + center[0]
        sing = problem.variety.known_singular_params()
        if sing is not None and mod.exclude_singular > 0:
            d = np.min(np.abs(pts[:, None] - sing[None, :, 0]), axis=1)
            pts = pts[d >= mod.exclude_singular]
        return pts[:, None]
    with jax.enable_x64(True):
        key = jax.random.PRNGKey(cfg.eval.seed)
        return np.asarray(problem.moduli_sampler(key, cfg.eval.random_moduli), np.complex128)


def _sigmas(problem, metric, h_of, h_args, moduli, key, points):
    """sigma per moduli value, one moduli value at a time (memory ~ points x N).

    ``h_of(h_args, psi) -> H``; ``h_args`` (e.g. network parameters) are passed as jit
    arguments, not baked into the program as constants."""
    variety = problem.variety

    def one(h_args, k, psi):
        sample = variety.sample(k, psi, points, dtype=problem.cdtype)
        h = h_of(h_args, psi)
        eta = metric.eta(h, sample.zs, psi, sample.patch, sample.dependent)
        est = sigma_from_eta(eta, sample.weights, sample.n_failed)
        return est.value, est.stderr, est.n_failed

    keys = jax.random.split(key, moduli.shape[0])
    run = jax.jit(lambda a, ks, ms: jax.lax.map(lambda x: one(a, *x), (ks, ms)))
    return run(h_args, keys, moduli)


def evaluate_params(cfg: Config, problem, params, run_dir, *, grid=None, steps=None, elapsed=None, stopped=None):
    """Compute and write the evaluation of trained ``params``; returns the summary dict."""
    from .train import h_function, read_metrics

    run_dir = Path(run_dir)
    moduli = jnp.asarray(eval_moduli(cfg, problem, grid), problem.cdtype)
    key = jax.random.PRNGKey(cfg.eval.seed)
    h_fn = h_function(problem)
    N = problem.metric.basis_size
    eye_k = jnp.eye(N, dtype=problem.cdtype)
    eye_1 = jnp.eye(problem.fs_metric.basis_size, dtype=problem.cdtype)
    pts = cfg.eval.points
    net = _sigmas(problem, problem.metric, lambda p, psi: h_fn(p, psi[None])[0], params, moduli, key, pts)
    ident = _sigmas(problem, problem.metric, lambda h, psi: h, eye_k, moduli, key, pts)
    fs = _sigmas(problem, problem.fs_metric, lambda h, psi: h, eye_1, moduli, key, pts)
    net, ident, fs = (jax.device_get(x) for x in (net, ident, fs))
    mods = np.asarray(moduli)
    summary = {
        "name": cfg.name,
        "variety": repr(problem.variety),
        "k": cfg.model.k,
        "basis_size": int(N),
        "steps": steps,
        "train_seconds": None if elapsed is None else round(float(elapsed), 2),
        "stopped": stopped,
        "eval_points_per_moduli": pts,
        "n_moduli": int(mods.shape[0]),
        "mean_sigma": {
            "network": float(np.mean(net[0])),
            "fubini_study": float(np.mean(fs[0])),
            "identity": float(np.mean(ident[0])),
        },
        "moduli": [[[float(z.real), float(z.imag)] for z in row] for row in mods],
        "sigma": {
            "network": net[0].tolist(),
            "network_stderr": net[1].tolist(),
            "fubini_study": fs[0].tolist(),
            "identity": ident[0].tolist(),
        },
        "rejected_points": int(np.sum(net[2])),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _plot_training(read_metrics(run_dir), run_dir / "training.png")
    _plot_moduli(mods, net[0], fs[0], ident[0], run_dir / "sigma_moduli.png", problem.variety.param_names)
    return summary


def evaluate_run(run_dir, grid: int | None = None) -> dict:
    """Re-evaluate a finished or interrupted run from its config and last checkpoint."""
    from .train import build_problem, init_params, initial_state, load_checkpoint, make_optimizer
    from .config import config_hash

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"run directory {run_dir} does not exist")
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{run_dir} is not a cyflat run directory (no config.yaml)")
    cfg = load_config(str(run_dir / "config.yaml"))
    with jax.enable_x64(cfg.train.dtype == "float64"):
        problem = build_problem(cfg)
        opt = make_optimizer(cfg)
        template = initial_state(cfg, init_params(cfg, problem, jax.random.PRNGKey(0)), opt)
        state, elapsed = load_checkpoint(run_dir, template, config_hash(cfg))
        return evaluate_params(cfg, problem, state.eval_params, run_dir, grid=grid, steps=int(state.step),
                               elapsed=elapsed, stopped="evaluated")


def format_summary(summary: dict) -> str:
    ms = summary["mean_sigma"]
    lines = [
        f"{summary['name']}: k={summary['k']} ({summary['basis_size']} sections), {summary['steps']} steps, "
        f"{summary['n_moduli']} held-out moduli x {summary['eval_points_per_moduli']} points",
        f"  mean sigma   network {ms['network']:.4f}   Fubini-Study {ms['fubini_study']:.4f}   "
        f"identity H {ms['identity']:.4f}",
    ]
    return "\n".join(lines)


def _figure(**kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def _plot_training(records, path):
    if not records:
        return
    fig = _figure(figsize=(9, 3.5))
    ax1, ax2 = fig.subplots(1, 2)
    steps = [r["step"] for r in records if "loss" in r]
    ax1.semilogy(steps, [r["loss"] for r in records if "loss" in r])
    ax1.set_xlabel("step")
    ax1.set_ylabel("Monge-Ampere loss")
    vs = [(r["step"], r["val_sigma"]) for r in records if "val_sigma" in r]
    if vs:
        ax2.plot(*zip(*vs), marker="o")
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation sigma")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _plot_moduli(moduli, net, fs, ident, path, names):
    m = moduli.shape[1]
    x, y = (moduli[:, 0].real, moduli[:, 0].imag) if m == 1 else (None, None)
    if m == 1 and len(x) >= 3 and np.linalg.matrix_rank(np.stack([x - x[0], y - y[0]])) == 2:
        # Heat maps (linear interpolation on a triangulation of the evaluated moduli, which
        # are marked), the network next to the Fubini-Study metric.
        fig = _figure(figsize=(10, 4.2))
        for ax, vals, label in zip(fig.subplots(1, 2), (net, fs), ("network", "Fubini-Study")):
            tc = ax.tripcolor(x, y, vals, shading="gouraud", cmap="viridis")
            ax.plot(x, y, "k.", ms=3)
            fig.colorbar(tc, ax=ax, label=f"sigma ({label})")
            ax.set_xlabel(f"Re {names[0]}")
            ax.set_ylabel(f"Im {names[0]}")
            ax.set_title(f"sigma over the moduli region: {label}")
    else:
        fig = _figure(figsize=(4.5 * max(m, 1), 3.8))
        axes = np.atleast_1d(fig.subplots(1, max(m, 1)))
        for j, ax in enumerate(axes):
            x = np.abs(moduli[:, j]) if m else np.zeros(len(net))
            for vals, label in ((net, "network"), (fs, "Fubini-Study"), (ident, "identity H")):
                ax.scatter(x, vals, label=label, s=18)
            ax.set_xlabel(f"|{names[j]}|" if m else "")
            ax.set_ylabel("sigma")
        axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
