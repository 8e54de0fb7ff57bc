"""The ``cyflat`` command line.

    cyflat train [CONFIG] [key=value ...]      train (default config: dwork)
    cyflat train --resume RUN_DIR              continue an interrupted run
    cyflat evaluate RUN_DIR [--grid N]         re-evaluate a run
    cyflat donaldson --variety dwork --psi 0.5 --k 1 2 3
    cyflat volume --variety dwork --psi 0.5    Omega-volume by Monte Carlo
    cyflat configs [NAME]                      list shipped configs / print one

Problems with the input are reported in one line with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

__all__ = ["main"]


class UsageError(ValueError):
    pass


def _variety_from_args(args):
    from .train import build_variety
    from .config import VarietyConfig, Config

    cfg = Config(variety=VarietyConfig(name=args.variety, dim=args.dim, params=args.params or []))
    return build_variety(cfg)


def _moduli_from_args(variety, psi_text):
    import numpy as np

    from .config import parse_complex

    m = variety.num_params
    if psi_text is not None and m == 0:
        raise UsageError(f"--psi: {variety!r} has no moduli; leave out --psi")
    if psi_text is None:
        if m:
            raise UsageError(f"--psi: the variety has moduli {list(variety.param_names)}; give {m} value(s)")
        return None
    try:
        vals = [parse_complex(v) for v in psi_text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--psi: cannot read {psi_text!r} as complex numbers (e.g. 0.5 or 1.5+0.7i or 1,0.3)") from None
    if len(vals) != m:
        raise UsageError(f"--psi: expected {m} value(s) for {list(variety.param_names)}, got {len(vals)}")
    return np.asarray(vals, np.complex128)


def _add_variety_args(p):
    p.add_argument("--variety", default="dwork", help="fermat | dwork | quintic-2param | a polynomial in z0..zn")
    p.add_argument("--dim", type=int, default=3, help="complex dimension for fermat/dwork (3: quintic)")
    p.add_argument("--params", nargs="*", help="moduli names used in a polynomial string")
    p.add_argument("--psi", help="moduli values, comma separated (e.g. 0.5 or 1.5+0.7i)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")


def cmd_train(args):
    from .config import load_config
    from .evaluate import format_summary
    from .train import fit

    if args.distributed:
        import jax

        jax.distributed.initialize()
    if args.resume:
        if args.config or args.overrides:
            raise UsageError("--resume takes the run directory's own config; drop CONFIG and overrides")
        run = Path(args.resume)
        if not (run / "config.yaml").is_file():
            raise UsageError(f"--resume: {run} is not a cyflat run directory (no config.yaml)")
        cfg = load_config(str(run / "config.yaml"))
        result = fit(cfg, resume=run)
    else:
        source = args.config
        overrides = list(args.overrides)
        if source and "=" in source:
            overrides.insert(0, source)
            source = None
        cfg = load_config(source or "dwork", overrides)
        if args.show_config:
            from .config import to_yaml

            print(to_yaml(cfg))
            return 0
        result = fit(cfg)
    print(f"run directory: {result.run_dir}")
    if result.summary:
        print(format_summary(result.summary))
    return 0


def cmd_evaluate(args):
    from .evaluate import evaluate_run, format_summary

    summary = evaluate_run(args.run_dir, grid=args.grid)
    print(format_summary(summary))
    return 0


def cmd_donaldson(args):
    import jax

    from .donaldson import plot_sigma_vs_k, sigma_scan

    with jax.enable_x64(args.dtype == "float64"):
        variety = _variety_from_args(args)
        psi = _moduli_from_args(variety, args.psi)
        results = sigma_scan(
            variety, args.k, psi, jax.random.PRNGKey(args.seed), iterations=args.iterations,
            n_points=args.points, sigma_points=args.sigma_points,
            dtype=jax.numpy.float64 if args.dtype == "float64" else jax.numpy.float32,
            on_singular="raise" if args.refuse_singular else "warn",
        )
    print(f"{'k':>3} {'N_k':>5} {'sigma':>9} {'+-':>8} {'seconds':>8}")
    for r in results:
        print(f"{r['k']:>3} {r['basis_size']:>5} {r['sigma']:>9.4f} {r['stderr']:>8.4f} {r['seconds']:>8.1f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "donaldson.json").write_text(json.dumps({"variety": repr(variety), "psi": args.psi, "results": results}, indent=2))
    plot_sigma_vs_k(results, out / "donaldson_sigma.png")
    print(f"wrote {out / 'donaldson.json'} and {out / 'donaldson_sigma.png'}")
    return 0


def cmd_volume(args):
    import jax

    with jax.enable_x64(args.dtype == "float64"):
        variety = _variety_from_args(args)
        psi = _moduli_from_args(variety, args.psi)
        cdtype = jax.numpy.complex128 if args.dtype == "float64" else jax.numpy.complex64
        est = variety.compute_vol(jax.random.PRNGKey(args.seed), psi, args.points, dtype=cdtype)
        print(f"{variety!r}")
        print(f"Omega-volume  {float(est.value):.6g} +- {float(est.stderr):.2g}   "
              f"(Fubini-Study volume {variety.vol_fs:.6g}; {args.points} points, "
              f"effective sample size {float(est.ess):.0f}, rejected {int(est.n_failed)})")
    return 0


def cmd_configs(args):
    from importlib import resources

    from .config import list_presets

    if args.name:
        if args.name not in list_presets():
            raise UsageError(f"unknown config '{args.name}'; shipped: {', '.join(list_presets())}")
        print(resources.files("cyflat.configs").joinpath(args.name + ".yaml").read_text())
    else:
        print("\n".join(list_presets()))
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="cyflat", description="Numerical Ricci-flat Calabi-Yau metrics with JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an HNet (or a free H) for a family of varieties")
    t.add_argument("config", nargs="?", help="shipped config name (dwork, dwork-gpu, quintic-2param, fermat) or YAML path")
    t.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.time_limit=60 model.k=2")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    t.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() first (multi-host)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a finished or interrupted run")
    e.add_argument("run_dir")
    e.add_argument("--grid", type=int, help="grid points per direction (one complex modulus)")
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("donaldson", help="balanced metrics and their sigma for several k")
    _add_variety_args(d)
    d.add_argument("--k", type=int, nargs="+", default=[1, 2, 3])
    d.add_argument("--iterations", type=int, default=10)
    d.add_argument("--points", type=int, help="points per T-step (default 10 N_k^2 + 50000)")
    d.add_argument("--sigma-points", type=int, default=100_000)
    d.add_argument("--out", default="donaldson-out")
    d.add_argument("--refuse-singular", action="store_true", help="exit with an error at singular moduli")
    d.set_defaults(func=cmd_donaldson)

    v = sub.add_parser("volume", help="Omega-volume of a variety by Monte Carlo")
    _add_variety_args(v)
    v.add_argument("--points", type=int, default=200_000)
    v.set_defaults(func=cmd_volume)

    c = sub.add_parser("configs", help="list the shipped configs or print one")
    c.add_argument("name", nargs="?")
    c.set_defaults(func=cmd_configs)
    return p


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line on stderr (no source path or code line)."""
    print(f"cyflat: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("default", module="cyflat")
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except (ValueError, FloatingPointError, FileNotFoundError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"cyflat {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cyflat {args.command}: interrupted (the last checkpoint is kept; resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
