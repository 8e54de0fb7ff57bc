"""Benchmarks of the algebraic metric.

``bench_eta()``: eta evaluations per second (batched, jit-compiled, float32 and float64)
on the Fermat quintic with the reduced monomial basis at k = 2..6, and the process's
peak resident memory (``resource.getrusage(...).ru_maxrss``).

Run: ``python bench/metric.py [--points B] [--repeats R] [--ks 2,3,4]``.  The script
enables float64 itself (the library never changes JAX's configuration).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import cyflat  # noqa: E402

# Targets on the 2-core development machine (float64, points per second).
ETA_TARGETS_F64 = {3: 400_000, 4: 180_000}


def _peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def _random_h(key, N, dtype):
    a = jax.random.normal(key, (N, N), dtype)
    return (a @ jnp.conj(a).T / N + jnp.eye(N, dtype=dtype)).astype(dtype)


def _time(fn, repeats):
    """Best wall and process-CPU times of ``repeats`` calls (after a warm-up call that
    compiles).  CPU time sums all threads; on a shared, loaded machine it is the steadier
    measure of the work done (wall time then includes waiting for a core)."""
    jax.block_until_ready(fn())
    best, best_cpu = np.inf, np.inf
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


def bench_eta(ks=(2, 3, 4, 5, 6), points=20_000, repeats=5, dtypes=("f64", "f32"), verbose=True):
    """eta throughput (points/s) of ``AlgebraicMetric.eta`` on the Fermat quintic.

    Returns a list of dicts ``{k, N, dtype, points, seconds, points_per_s, peak_rss_mib}``.
    """
    variety = cyflat.Fermat(3)
    params = jnp.zeros((0,), jnp.complex128)
    results = []
    for name in dtypes:
        cdtype = {"f64": jnp.complex128, "f32": jnp.complex64}[name]
        sample = variety.sample(jax.random.PRNGKey(0), params, points, dtype=cdtype)
        for k in ks:
            basis = cyflat.MonomialBasisReduced(variety, k, params)
            metric = cyflat.AlgebraicMetric(variety, basis)
            h = _random_h(jax.random.PRNGKey(k), basis.size, cdtype)
            fn = jax.jit(lambda h, zs, p, d, m=metric: m.eta(h, zs, params.astype(cdtype), p, d))
            seconds, cpu = _time(lambda: fn(h, sample.zs, sample.patch, sample.dependent), repeats)
            row = dict(
                k=k, N=basis.size, dtype=name, points=points, seconds=seconds, cpu_seconds=cpu,
                points_per_s=points / seconds, points_per_cpu_s=points / cpu, peak_rss_mib=_peak_rss_mib(),
            )
            results.append(row)
            if verbose:
                target = ETA_TARGETS_F64.get(k) if name == "f64" else None
                tgt = f"  (target >= {target:,})" if target else ""
                print(
                    f"eta {name} k={k} N={basis.size:4d}: {row['points_per_s']:10,.0f} points/s "
                    f"({seconds * 1e3:8.2f} ms / {points} points; {row['points_per_cpu_s']:10,.0f} points/cpu-s), "
                    f"peak RSS {row['peak_rss_mib']:.0f} MiB{tgt}",
                    flush=True,
                )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ks", default="2,3,4,5,6")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__}, devices {jax.devices()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}")
    ks = tuple(int(x) for x in args.ks.split(","))
    bench_eta(ks=ks, points=args.points, repeats=args.repeats)


if __name__ == "__main__":
    main()
