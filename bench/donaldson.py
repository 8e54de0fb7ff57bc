"""Benchmark of Donaldson's T-operator.

``bench_t_step()``: wall time of one T-step (``cyflat.donaldson.t_operator``, jit-compiled,
timed after a warm-up call) on the Fermat quintic with the reduced basis at k = 3, 4, 5
and the default point budget ``10 N_k^2 + 50 000`` (k = 5: N = 125, 206 250 points), and
the process's peak resident memory (``resource.getrusage(...).ru_maxrss``).

Run: ``python bench/donaldson.py [--ks 3,4,5] [--repeats R] [--batch-sizes 1024,2048]
[--dtype f64|f32]``.  The script enables float64 itself (the library never changes JAX's
configuration).  Target on the 2-core development machine, float64: k = 5 <= 2.5 s.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import cyflat  # noqa: E402
from cyflat import donaldson  # noqa: E402

# Target seconds per T-step on the 2-core development machine (float64, default budget).
T_STEP_TARGETS_F64 = {5: 2.5}


def _peak_rss_mib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def _random_h(N, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(N, N)) + 1j * rng.normal(size=(N, N))
    return a @ a.conj().T / N + np.eye(N)


def _time(fn, repeats):
    """Best and median wall time and the median process CPU time (all threads) of
    ``repeats`` calls, after one warm-up call that compiles.  CPU time is the better
    measure on a shared machine: wall time there depends on the other processes."""
    jax.block_until_ready(fn())
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), float(np.median(times)), float(np.median(cpu))


def bench_t_step(ks=(3, 4, 5), repeats=3, batch_sizes=(None,), dtype="f64", verbose=True):
    """Seconds per Donaldson T-step at the default point budget.

    Returns a list of dicts ``{k, N, points, batch_size, dtype, seconds, median_seconds,
    cpu_seconds, points_per_s, peak_rss_mib}`` (``seconds`` is the best wall time of
    ``repeats``, ``cpu_seconds`` the median process CPU time summed over threads).
    """
    variety = cyflat.Fermat(3)
    cdtype = {"f64": jnp.complex128, "f32": jnp.complex64}[dtype]
    params = jnp.zeros((0,), cdtype)
    results = []
    for k in ks:
        basis = cyflat.MonomialBasisReduced(variety, k, params, check=False)
        N = basis.size
        P = donaldson.default_n_points(N)
        zs, patch, _, w, _ = donaldson._sample_points(variety, jax.random.PRNGKey(k), params, P, cdtype)
        h = jnp.asarray(_random_h(N, k), cdtype)
        for B in batch_sizes:
            Bu = donaldson.default_batch_size(N) if B is None else B
            fn = lambda: donaldson.t_operator(basis, h, zs, patch, w, batch_size=Bu)  # noqa: E731
            best, med, cpu = _time(fn, repeats)
            row = dict(
                k=k, N=N, points=P, batch_size=Bu, dtype=dtype, seconds=best, median_seconds=med, cpu_seconds=cpu,
                points_per_s=P / best, peak_rss_mib=_peak_rss_mib(),
            )
            results.append(row)
            if verbose:
                target = T_STEP_TARGETS_F64.get(k) if dtype == "f64" else None
                tgt = f"  (target <= {target} s)" if target else ""
                print(
                    f"T-step {dtype} k={k} N={N:4d} points={P:7d} batch={Bu:5d}: {best:7.3f} s "
                    f"(median {med:7.3f} s, CPU {cpu:7.3f} s, {P / best:9,.0f} points/s), peak RSS "
                    f"{row['peak_rss_mib']:.0f} MiB{tgt}",
                    flush=True,
                )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ks", default="3,4,5", help="comma-separated degrees k")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="", help="comma-separated batch sizes (default: library default)")
    parser.add_argument("--dtype", choices=("f64", "f32"), default="f64")
    args = parser.parse_args(argv)
    ks = tuple(int(x) for x in args.ks.split(",") if x)
    bss = tuple(int(x) for x in args.batch_sizes.split(",") if x) or (None,)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.local_device_count()} device(s)")
    return bench_t_step(ks, args.repeats, bss, args.dtype)


if __name__ == "__main__":
    main()
