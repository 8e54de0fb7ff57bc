"""Training-step throughput: value_and_grad of the Monge-Ampere loss + optimiser update.

Prints steps/s and points/s after compilation, the compile time and the peak memory, for
  * the issue's reference step: k = 2, hidden [64, 64], 4 moduli x 200 points, float64;
  * the default config (dwork, k = 3, [128, 128], 4 x 500, float64);
  * k = 4 and k = 5 (float32, reduced basis).
Batches come from the BatchSampler (as in training), so sampling cost is included.

    python bench/train_step.py [--seconds 10]
"""

import argparse
import resource
import time

import jax

jax.config.update("jax_enable_x64", True)

from cyflat import train as tr  # noqa: E402
from cyflat.config import load_config  # noqa: E402

CASES = [
    ("k=2 [64,64] 4x200 f64", ["model.k=2", "model.layers=[64,64]", "train.batch_points=200"]),
    ("default (dwork k=3 [128,128] 4x500 f64)", []),
    ("k=4 reduced [128,128] 4x500 f32", ["model.k=4", "model.basis=reduced", "train.dtype=float32"]),
    ("k=5 reduced [128,128] 4x500 f32", ["model.k=5", "model.basis=reduced", "train.dtype=float32"]),
]


def bench(overrides, seconds):
    cfg = load_config("dwork", overrides)
    t = cfg.train
    with jax.enable_x64(t.dtype == "float64"):
        problem = tr.build_problem(cfg)
        opt = tr.make_optimizer(cfg)
        state = tr.initial_state(cfg, tr.init_params(cfg, problem, jax.random.PRNGKey(0)), opt)
        sampler = tr.ml.BatchSampler(0, problem.variety, problem.moduli_sampler, batch_size_params=t.batch_moduli,
                                     batch_size=t.batch_points, buffer_size=t.buffer_size, dtype=problem.cdtype)
        step, _ = tr.make_train_step(problem, opt, jax.random.PRNGKey(1), t.loss, t.ema_decay)
        step = jax.jit(step, donate_argnums=0)
        t0 = time.perf_counter()
        batch = next(sampler)
        jax.block_until_ready(batch)
        t_sample = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, loss = step(state, batch)
        loss.block_until_ready()
        t_compile = time.perf_counter() - t0
        # The first step's output state is committed to the device, the initial one is
        # not: the second call compiles once more.  Warm that up too (training places
        # the state on the device before the first step and compiles once).
        state, loss = step(state, batch)
        loss.block_until_ready()
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(20):
                state, loss = step(state, next(sampler))
                n += 1
            loss.block_until_ready()
        dt = time.perf_counter() - t0
    rate = n / dt
    return rate, rate * t.batch_moduli * t.batch_points, t_compile, t_sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    print(f"{'case':<42} {'steps/s':>9} {'points/s':>11} {'compile s':>10} {'sampler s':>10}")
    for name, ov in CASES:
        rate, pts, tc, ts = bench(ov, args.seconds)
        print(f"{name:<42} {rate:>9.1f} {pts:>11.0f} {tc:>10.2f} {ts:>10.2f}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (max RSS): {peak:.0f} MiB")


if __name__ == "__main__":
    main()
