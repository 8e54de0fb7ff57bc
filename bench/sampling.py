"""Sampling throughput: points/second (with weights) of ``Hypersurface.sample``.

Usage::

    python bench/sampling.py [--count N] [--calls K] [--variety fermat|dwork|twoparam]

Enables float64 itself (it is a script, not the library).  For complex128 and
complex64 it reports

* compile: ``lower().compile()`` of the jitted sampler (wall and process CPU time; on
  a shared machine the CPU time is the steadier number: XLA compiles on one thread),
* first call: what a user waits for on the first ``sample`` call (compile + run),
* throughput: ``count`` points per call, ``block_until_ready``, median and best of
  ``calls`` calls after compilation, with fresh keys.
"""

from __future__ import annotations

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

import cyflat  # noqa: E402
from cyflat.variety import _sample_jit  # noqa: E402


def _timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def bench(variety, params, count, calls, dtype):
    params = variety.check_params(params, dtype).astype(dtype)
    key = jax.random.PRNGKey(0)
    jax.clear_caches()
    _, t_compile, c_compile = _timed(lambda: _sample_jit.lower(variety, key, params, count, dtype).compile())
    jax.clear_caches()
    out, t_first, _ = _timed(lambda: jax.block_until_ready(variety.sample(key, params, count, dtype=dtype)))
    times, cpus = [], []
    for i in range(calls):
        k = jax.random.PRNGKey(i + 1)
        out, t, c = _timed(lambda: jax.block_until_ready(variety.sample(k, params, count, dtype=dtype)))
        times.append(t)
        cpus.append(c)
    best = min(times)
    median = sorted(times)[len(times) // 2]
    print(
        f"{variety.name:>19s} {jnp.dtype(dtype).name:>10s}: compile {t_compile:5.2f} s "
        f"(cpu {c_compile:5.2f} s), first call {t_first:5.2f} s | {count} points: "
        f"median {median * 1e3:6.1f} ms, best {best * 1e3:6.1f} ms -> "
        f"{count / median / 1e3:6.1f} k points/s (best {count / best / 1e3:6.1f} k; "
        f"cpu {sorted(cpus)[len(cpus) // 2] * 1e3:6.1f} ms per call); "
        f"n_failed {int(jnp.sum(out.n_failed))}",
        flush=True,
    )
    return count / median


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200_000, help="points per call")
    ap.add_argument("--calls", type=int, default=5, help="timed calls after compilation")
    ap.add_argument("--variety", default="fermat", choices=["fermat", "dwork", "twoparam"])
    ap.add_argument("--dtype", default="both", choices=["both", "complex128", "complex64"])
    args = ap.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()}")
    if args.variety == "fermat":
        variety, params = cyflat.Fermat(3), None
    elif args.variety == "dwork":
        variety, params = cyflat.Dwork(3), jnp.asarray([1.5 + 0.7j])
    else:
        variety, params = cyflat.TwoParameterQuintic(), jnp.asarray([1 + 1j, 0.3])
    dtypes = (jnp.complex128, jnp.complex64) if args.dtype == "both" else (jnp.dtype(args.dtype),)
    for dtype in dtypes:
        bench(variety, params, args.count, args.calls, dtype)


if __name__ == "__main__":
    main()
