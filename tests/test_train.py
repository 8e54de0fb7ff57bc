"""Training runs: reproducibility, resume, NaN handling, crash safety, data-parallel sharding."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cyflat import train as tr
from cyflat.config import load_config

# The Dwork cubic curve (dim 1) keeps compilation short; nothing here depends on the dimension.
TINY = [
    "variety.dim=1",
    "model.k=2",
    "model.layers=[8]",
    "train.batch_moduli=2",
    "train.batch_points=64",
    "train.buffer_size=4",
    "train.time_limit=0",
    "train.steps=24",
    "train.log_every=4",
    "train.val_every=8",
    "train.val_moduli=2",
    "train.val_points=64",
    "train.checkpoint_every=8",
    "eval.grid=2",
    "eval.points=200",
]

STABLE_FIELDS = ("step", "loss", "val_sigma", "skipped_steps", "rejected_points")


def tiny(tmp_path, name, *extra):
    return load_config("dwork", TINY + [f"run_dir={tmp_path / name}", *extra])


def stable(records):
    return [{k: r[k] for k in STABLE_FIELDS if k in r} for r in records]


def test_same_seed_same_metrics(tmp_path):
    a = tr.fit(tiny(tmp_path, "a"), progress=False, evaluate=False)
    b = tr.fit(tiny(tmp_path, "b"), progress=False, evaluate=False)
    ra, rb = tr.read_metrics(a.run_dir), tr.read_metrics(b.run_dir)
    assert len(ra) == 24 // 4
    assert stable(ra) == stable(rb)
    np.testing.assert_array_equal(
        np.asarray(jax.tree_util.tree_leaves(a.params)[0]), np.asarray(jax.tree_util.tree_leaves(b.params)[0])
    )
    c = tr.fit(tiny(tmp_path, "c", "train.seed=1"), progress=False, evaluate=False)
    assert stable(tr.read_metrics(c.run_dir)) != stable(ra)


class _Crash(Exception):
    pass


def test_resume_continues_same_trajectory(tmp_path, monkeypatch):
    # with a parameter average: it is checkpointed and restored too
    ema = "train.ema_decay=0.9"
    full = tr.fit(tiny(tmp_path, "full", ema), progress=False, evaluate=False)

    # Crash while fetching the batch for step 14 (the last checkpoint is at step 8).
    calls = {"n": 0}
    real_next = tr.ml.BatchSampler.__next__

    def counting_next(self):
        calls["n"] += 1
        if calls["n"] > 13:
            raise _Crash()
        return real_next(self)

    monkeypatch.setattr(tr.ml.BatchSampler, "__next__", counting_next)
    with pytest.raises(_Crash):
        tr.fit(tiny(tmp_path, "crash", ema), progress=False, evaluate=False)
    monkeypatch.undo()
    run = tmp_path / "crash"
    assert max(r["step"] for r in tr.read_metrics(run)) == 12
    resumed = tr.fit(load_config(str(run / "config.yaml")), resume=run, progress=False, evaluate=False)
    assert resumed.steps == 24
    steps = [r["step"] for r in tr.read_metrics(run)]
    assert steps == sorted(set(steps)) == list(range(4, 25, 4))
    for x, y in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    assert stable(tr.read_metrics(run)) == stable(tr.read_metrics(full.run_dir))


def test_resume_rejects_other_config(tmp_path):
    cfg = tiny(tmp_path, "r", "train.steps=8", "train.ema_decay=0")
    tr.fit(cfg, progress=False, evaluate=False)
    other = tiny(tmp_path, "r", "train.steps=8", "model.layers=[4]")
    with pytest.raises(ValueError, match="different config"):
        tr.fit(other, resume=tmp_path / "r", progress=False, evaluate=False)
    with pytest.raises(ValueError, match="not a cyflat run directory"):
        tr.fit(cfg, resume=tmp_path / "nothing-here", progress=False, evaluate=False)
    with pytest.raises(ValueError, match="no parameter average"):
        tr.fit(tiny(tmp_path, "r", "train.steps=16", "train.ema_decay=0.5"), resume=tmp_path / "r", progress=False,
               evaluate=False)


def _problem_and_state(cfg):
    problem = tr.build_problem(cfg)
    opt = tr.make_optimizer(cfg)
    state = tr.initial_state(cfg, tr.init_params(cfg, problem, jax.random.PRNGKey(0)), opt)
    return problem, opt, state


def test_nan_batch_skips_update(tmp_path):
    cfg = tiny(tmp_path, "nan", "train.ema_decay=0.75")
    problem, opt, state = _problem_and_state(cfg)
    step, _ = tr.make_train_step(problem, opt, jax.random.PRNGKey(1), ema_decay=0.75)
    step = jax.jit(step)
    sampler = tr.ml.BatchSampler(0, problem.variety, problem.moduli_sampler, batch_size_params=2, batch_size=64,
                                 buffer_size=2, dtype=problem.cdtype)
    good = next(sampler)
    bad = (good[0], good[1], good[2], good[3].at[0, 0].set(jnp.nan))
    # one good step first, so that the average differs from the parameters
    state, _ = step(state, next(sampler))
    assert int(state.bad_total) == 0 and not all(
        np.array_equal(np.asarray(e), np.asarray(p))
        for e, p in zip(jax.tree_util.tree_leaves(state.ema), jax.tree_util.tree_leaves(state.params))
    )
    new, loss = step(state, bad)
    assert not np.isfinite(float(loss))
    assert int(new.bad_streak) == 1 and int(new.bad_total) == 1
    for x, y in zip(jax.tree_util.tree_leaves(new.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x in jax.tree_util.tree_leaves(new.opt_state):
        assert np.all(np.isfinite(np.asarray(x)))
    for x, y in zip(jax.tree_util.tree_leaves(new.ema), jax.tree_util.tree_leaves(state.ema)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    after, loss2 = step(new, good)
    assert np.isfinite(float(loss2)) and int(after.bad_streak) == 0 and int(after.bad_total) == 1
    # the average moves a quarter of the way to the new parameters
    for e1, e0, p1 in zip(*(jax.tree_util.tree_leaves(t) for t in (after.ema, new.ema, after.params))):
        np.testing.assert_allclose(np.asarray(e1), 0.75 * np.asarray(e0) + 0.25 * np.asarray(p1), rtol=1e-12, atol=1e-15)
    assert after.eval_params is after.ema
    changed = any(
        not np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree_util.tree_leaves(after.params), jax.tree_util.tree_leaves(state.params))
    )
    assert changed


def test_repeated_failure_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    real_next = tr.ml.BatchSampler.__next__
    count = {"n": 0}

    def poisoned(self):
        count["n"] += 1
        b = real_next(self)
        if count["n"] > 10:
            return (b[0], b[1], b[2], b[3] * jnp.nan)
        return b

    monkeypatch.setattr(tr.ml.BatchSampler, "__next__", poisoned)
    cfg = tiny(tmp_path, "fail", "train.max_bad_steps=3", "train.steps=40")
    with pytest.warns(UserWarning, match="non-finite"), pytest.raises(FloatingPointError, match="checkpoint"):
        tr.fit(cfg, progress=False, evaluate=False)
    payload = (tmp_path / "fail" / tr.CHECKPOINT).read_bytes()
    from flax import serialization

    ck = serialization.msgpack_restore(payload)
    assert ck["step"] == 8
    for leaf in jax.tree_util.tree_leaves(ck["params"]):
        assert np.all(np.isfinite(np.asarray(leaf)))


SHARD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    assert len(jax.devices()) == 4, jax.devices()
    from cyflat import train as tr
    from cyflat.config import load_config
    cfg = load_config("dwork", sys.argv[1:])
    problem = tr.build_problem(cfg)
    opt = tr.make_optimizer(cfg)
    params = tr.init_params(cfg, problem, jax.random.PRNGKey(0))
    state = tr.TrainState(jnp.asarray(0), params, opt.init(params), jnp.asarray(0), jnp.asarray(0))
    step, _ = tr.make_train_step(problem, opt, jax.random.PRNGKey(1))
    batch_sh, repl = tr._mesh_shardings(cfg.train.batch_moduli)
    sampler = tr.ml.BatchSampler(0, problem.variety, problem.moduli_sampler, batch_size_params=4,
                                 batch_size=64, buffer_size=2, dtype=problem.cdtype)
    batch = next(sampler)
    one = jax.devices()[0]
    s1, l1 = jax.jit(step)(jax.device_put(state, one), jax.device_put(batch, one))
    sharded_batch = jax.device_put(batch, batch_sh)
    assert len(sharded_batch[1].sharding.device_set) == 4
    s4, l4 = jax.jit(step)(jax.device_put(state, repl), sharded_batch)
    assert abs(float(l1) - float(l4)) <= 1e-12 * abs(float(l1)), (float(l1), float(l4))
    for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s4.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)
    # the sampler places batches itself, and refuses a moduli batch the mesh cannot split
    placed = next(tr.ml.BatchSampler(0, problem.variety, problem.moduli_sampler, batch_size_params=4, batch_size=64,
                                     buffer_size=2, dtype=problem.cdtype, device=batch_sh))
    assert len(placed[1].sharding.device_set) == 4 and placed[0].shape == (4, 1)
    try:
        tr.ml.BatchSampler(0, problem.variety, problem.moduli_sampler, batch_size_params=3, batch_size=64,
                           buffer_size=2, dtype=problem.cdtype, device=batch_sh)
        raise AssertionError("P = 3 over 4 devices was accepted")
    except ValueError as err:
        assert "multiple of the 4 devices" in str(err), err
    print("SHARDED-OK", float(l1), float(l4))
    """
)


def test_sharded_step_equals_single_device(tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, str(script), "model.k=2", "model.layers=[16]", "train.batch_moduli=4"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "SHARDED-OK" in out.stdout


def test_sigkill_then_resume(tmp_path):
    """Kill a training process (SIGKILL) after its first checkpoint, leave a torn temporary
    checkpoint and a torn metrics line behind, then resume: nothing is corrupt, no step is
    missing or duplicated in the log."""
    run = tmp_path / "killed"
    args = [sys.executable, "-m", "cyflat.cli", "train", "dwork", *TINY, "train.steps=400", f"run_dir={run}"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ck = run / tr.CHECKPOINT
    deadline = time.time() + 240
    while time.time() < deadline and not ck.exists():
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ck.exists(), proc.stderr.read().decode()[-2000:]
    # A crash in the middle of writing leaves these behind:
    (run / ".checkpoint.msgpack.tmp-99999").write_bytes(b"\x00garbage")
    with open(run / tr.METRICS, "a") as fh:
        fh.write('{"step": 99999, "lo')
    from flax import serialization

    step_at_kill = serialization.msgpack_restore(ck.read_bytes())["step"]
    assert step_at_kill % 8 == 0 and step_at_kill >= 8
    out = subprocess.run(
        [sys.executable, "-m", "cyflat.cli", "train", "--resume", str(run)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    steps = [r["step"] for r in tr.read_metrics(run)]
    assert steps == list(range(4, 401, 4))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 400


def test_training_loop_traces_a_fixed_number_of_functions(tmp_path):
    """No recompilation inside the training loop: a run of 24 steps (6 sampler refills, 3
    validations, 3 checkpoints) traces exactly as many functions as a run of 8 steps."""
    counting = {"on": False, "n": 0}

    def listener(event, duration, **kwargs):
        if counting["on"] and event == "/jax/core/compile/jaxpr_trace_duration":
            counting["n"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    tr.fit(tiny(tmp_path, "warm", "train.steps=8"), progress=False, evaluate=False)  # module-level caches

    def traces(name, steps):
        counting.update(on=True, n=0)
        tr.fit(tiny(tmp_path, name, f"train.steps={steps}"), progress=False, evaluate=False)
        counting["on"] = False
        return counting["n"]

    short, long = traces("short", 8), traces("long", 24)
    assert short > 0 and long == short, (short, long)
