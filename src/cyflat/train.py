"""Training: learn H (or its moduli dependence) by minimising the Monge-Ampere loss.

``fit(config) -> FitResult`` runs a whole job and writes a run directory::

    RUN_DIR/config.yaml       the resolved config
    RUN_DIR/metrics.jsonl     one JSON record per logged step (step, loss, val_sigma, ...)
    RUN_DIR/checkpoint.msgpack  parameters (and their average), optimiser state, step,
                              elapsed time (atomic)
    RUN_DIR/summary.json      final evaluation (see :mod:`cyflat.evaluate`)
    RUN_DIR/*.png             loss / validation curves and sigma over the moduli region

Reproducibility: the batch used at step ``t`` depends only on ``(seed, t)`` (the sampler
refills its buffer ``t // buffer_size`` from ``fold_in(key(seed), refill)``), dropout keys
are ``fold_in(key, t)``, so a resumed run continues exactly the same trajectory.

Scale-out: the moduli axis of every batch is sharded over all visible JAX devices
(``jax.sharding``, data parallel, parameters replicated).  On several hosts call
``jax.distributed.initialize()`` first (``cyflat train --distributed``).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from . import ml
from .config import Config, ConfigError, config_hash, parse_complex, to_yaml
from .metric import AlgebraicMetric, sigma_from_eta
from .random import complex_box, uniform_unit_disk
from .sections import MonomialBasisFull, MonomialBasisReduced
from .singular import check_moduli
from .variety import Dwork, Fermat, Hypersurface, TwoParameterQuintic

__all__ = ["FitResult", "Problem", "TrainState", "build_problem", "fit", "initial_state", "make_train_step"]

CHECKPOINT = "checkpoint.msgpack"
METRICS = "metrics.jsonl"


# -- building blocks ------------------------------------------------------------------------


PRESET_VARIETIES = ("fermat", "dwork", "quintic-2param")


def build_variety(cfg: Config) -> Hypersurface:
    v = cfg.variety
    if v.name == "dwork":
        return Dwork(v.dim)
    if v.name == "fermat":
        return Fermat(v.dim)
    if v.name == "quintic-2param":
        return TwoParameterQuintic()
    if re.fullmatch(r"[A-Za-z_][\w-]*", v.name.strip()) and not re.fullmatch(r"z\d+", v.name.strip()):
        # a bare name, not a polynomial: a misspelled preset
        near = difflib.get_close_matches(v.name.strip(), PRESET_VARIETIES, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(
            f"unknown variety {v.name!r}: {hint}(presets: {', '.join(PRESET_VARIETIES)}, or a polynomial in z0..zn)"
        )
    return Hypersurface(v.name, params=tuple(v.params))


def moduli_center(cfg: Config, variety: Hypersurface) -> np.ndarray:
    m = variety.num_params
    center = [parse_complex(c) for c in cfg.moduli.center]
    if len(center) == 1 and m > 1:
        center = center * m
    if len(center) != m:
        raise ConfigError(
            f"moduli.center has {len(center)} entries but the variety has {m} moduli {list(variety.param_names)}"
        )
    return np.asarray(center, np.complex128)


def make_moduli_sampler(cfg: Config, variety: Hypersurface, dtype):
    """``sampler(key, P) -> (P, m)`` moduli uniform in the configured region, never within
    ``exclude_singular`` of a known singular member (rejection with spare draws)."""
    mod = cfg.moduli
    center = jnp.asarray(moduli_center(cfg, variety), dtype)
    m = variety.num_params
    singular = variety.known_singular_params()
    eps = mod.exclude_singular

    def draw(key, count):
        if mod.region == "point":
            return jnp.broadcast_to(center, (count, m))
        if mod.region == "box":
            w = mod.half_width
            z = complex_box(key, (count, m), (-w, w), (-w, w), dtype)
        else:
            z = uniform_unit_disk(key, (count, m), mod.radius, dtype)
        return z + center

    def sampler(key, count):
        if singular is None or eps <= 0 or mod.region == "point":
            return draw(key, count)
        cand = draw(key, 4 * count + 8)
        sing = jnp.asarray(singular, dtype)  # (S, m)
        dist = jnp.min(jnp.linalg.norm(cand[:, None, :] - sing[None], axis=-1), axis=-1)
        order = jnp.argsort(dist < eps, stable=True)
        return cand[order[:count]]

    return sampler


class Problem(NamedTuple):
    """Everything static about a run: variety, sections/metric, model, moduli sampler."""

    variety: Hypersurface
    metric: AlgebraicMetric
    fs_metric: AlgebraicMetric
    model: Any  # HNetMLP or None (free H)
    moduli_sampler: Any
    center: np.ndarray
    dtype: Any  # real dtype
    cdtype: Any  # complex dtype


def build_problem(cfg: Config) -> Problem:
    variety = build_variety(cfg)
    center = moduli_center(cfg, variety)
    rdtype = jnp.dtype(cfg.train.dtype)
    cdtype = jnp.dtype(jnp.complex128 if rdtype == jnp.float64 else jnp.complex64)
    k = cfg.model.k
    if cfg.model.basis == "reduced":
        sections = MonomialBasisReduced(variety, k, center if variety.num_params else None)
    else:
        sections = MonomialBasisFull(variety.dim_projective, k)
    metric = AlgebraicMetric(variety, sections)
    fs_metric = AlgebraicMetric(variety, MonomialBasisFull(variety.dim_projective, 1))
    model = None
    if cfg.model.kind == "hnet":
        if variety.num_params == 0:
            raise ConfigError("model.kind=hnet needs a family with moduli; use model.kind=free for a fixed variety")
        act = getattr(jax.nn, cfg.model.activation, None)
        if act is None:
            raise ConfigError(f"model.activation '{cfg.model.activation}' is not a jax.nn activation")
        scale = cfg.moduli.half_width if cfg.moduli.region == "box" else cfg.moduli.radius
        scale = max(scale, float(np.max(np.abs(center), initial=0.0)), 1e-12)
        model = ml.HNetMLP(
            basis_size=sections.size,
            layer_sizes=tuple(cfg.model.layers),
            powers=tuple(cfg.model.powers),
            feature_angle="angle" in cfg.model.features,
            feature_abs="abs" in cfg.model.features,
            feature_parts="parts" in cfg.model.features,
            activation=act,
            dropout_rate=cfg.model.dropout,
            sig_suppress=cfg.model.sig_suppress,
            init_fluctuation=cfg.model.init_fluctuation,
            moduli_scale=float(scale),
            param_dtype=rdtype,
            dtype=rdtype,
        )
    sampler = make_moduli_sampler(cfg, variety, cdtype)
    return Problem(variety, metric, fs_metric, model, sampler, center, rdtype, cdtype)


def h_function(problem: Problem):
    """``h_fn(net_params, moduli (P, m), rng, train) -> H (P, N, N)``."""
    model = problem.model

    if model is None:

        def h_fn(net_params, moduli, rng=None, train=False):
            h = ml.cholesky_from_param(net_params["h_par"])
            return jnp.broadcast_to(h, moduli.shape[:-1] + h.shape)

    else:

        def h_fn(net_params, moduli, rng=None, train=False):
            if train and rng is not None:
                out = model.apply(net_params, moduli, deterministic=False, rngs={"dropout": rng})
            else:
                out = model.apply(net_params, moduli, deterministic=True)
            return ml.cholesky_from_param(out)

    return h_fn


def _upper_cholesky_params(h: np.ndarray) -> np.ndarray:
    """Parameters p with cholesky_from_param(p) == h (h hermitian positive definite)."""
    N = h.shape[0]
    rev = h[::-1, ::-1]
    L = np.linalg.cholesky(rev)  # rev = L L^dagger
    M = L[::-1, ::-1]  # upper triangular, M M^dagger = h
    phase = np.exp(-1j * np.angle(np.diag(M)))
    M = M * phase[None, :]  # real positive diagonal, M M^dagger unchanged
    iu = np.triu_indices(N, 1)
    return np.concatenate([np.real(np.diag(M)), np.real(M[iu]), np.imag(M[iu])])


def init_params(cfg: Config, problem: Problem, key):
    if problem.model is None:
        N = problem.metric.basis_size
        if cfg.model.init == "donaldson":
            from .donaldson import balanced_metric

            res = balanced_metric(
                problem.variety, cfg.model.k, problem.center if problem.variety.num_params else None,
                jax.random.fold_in(key, 7), basis=problem.metric.sections,
            )
            h = np.asarray(res.h, np.complex128)
            h = h / np.real(np.trace(h)) * N
            return {"h_par": jnp.asarray(_upper_cholesky_params(h), problem.dtype)}
        return {"h_par": ml.hermitian_param_init(key, N, cfg.model.init_fluctuation or None, dtype=problem.dtype)}
    dummy = jnp.zeros((1, problem.variety.num_params), problem.cdtype)
    return problem.model.init({"params": key, "dropout": key}, dummy, deterministic=True)


def make_optimizer(cfg: Config):
    t = cfg.train
    if t.schedule == "cosine":
        lr = optax.cosine_decay_schedule(t.learning_rate, t.steps, alpha=t.final_lr_fraction)
    elif t.schedule == "exponential":
        lr = optax.exponential_decay(t.learning_rate, t.decay_steps, t.decay_rate)
    else:
        lr = t.learning_rate
    factory = getattr(optax, t.optimizer, None)
    if factory is None or not callable(factory):
        raise ConfigError(f"train.optimizer '{t.optimizer}' is not an optax optimiser")
    try:
        opt = factory(lr)
    except TypeError as err:
        raise ConfigError(f"train.optimizer '{t.optimizer}' cannot be built from a learning rate: {err}") from None
    if t.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), opt)
    return opt


class TrainState(NamedTuple):
    step: jax.Array
    params: Any  # the parameters to use: their moving average with train.ema_decay > 0
    opt_state: Any
    bad_streak: jax.Array  # consecutive skipped (non-finite) steps
    bad_total: jax.Array
    ema: Any = None  # moving average of params (train.ema_decay > 0), else None

    @property
    def eval_params(self):
        """The parameters to evaluate: the moving average if there is one."""
        return self.params if self.ema is None else self.ema


def initial_state(cfg: Config, params, optimizer) -> TrainState:
    """Step 0: ``params``, a fresh optimiser state and (with ``train.ema_decay``) the average."""
    def zero():  # separate buffers: the training step donates its input state
        return jnp.zeros((), jnp.int32)

    ema = jax.tree_util.tree_map(jnp.array, params) if cfg.train.ema_decay > 0 else None  # a copy
    return TrainState(zero(), params, optimizer.init(params), zero(), zero(), ema)


def make_train_step(problem: Problem, optimizer, base_key, loss: str = "variance", ema_decay: float = 0.0):
    """The update ``(state, batch) -> (state, loss)`` (to be jitted).

    ``batch = (moduli (P, m), zs (P, B, n), patch (P, B), weights (P, B))``; ``loss`` a
    key of :data:`cyflat.ml.LOSSES`.  A non-finite loss or gradient skips the update
    (parameters, optimiser state and average unchanged) and is counted in
    ``bad_streak``/``bad_total``.  If ``state.ema`` is not None it is moved towards the
    new parameters by ``1 - ema_decay``.
    """
    h_fn = h_function(problem)
    metric = problem.metric
    loss_one = ml.LOSSES[loss]

    def loss_fn(params, batch, rng):
        moduli = batch[0]
        h = h_fn(params, moduli, rng, True)
        losses = jax.vmap(loss_one, in_axes=(0, 0, None))(h, batch, metric)
        return jnp.mean(losses)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(base_key, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.asarray([jnp.all(jnp.isfinite(g)) for g in jax.tree_util.tree_leaves(grads)])
        )
        grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0), grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        params = jax.tree_util.tree_map(keep, params, state.params)
        ema = state.ema
        if ema is not None:
            ema = jax.tree_util.tree_map(lambda e, p: keep(e + (1 - ema_decay) * (p - e), e), ema, params)
        new = TrainState(
            state.step + 1,
            params,
            jax.tree_util.tree_map(keep, opt_state, state.opt_state),
            jnp.where(finite, 0, state.bad_streak + 1),
            state.bad_total + (~finite).astype(state.bad_total.dtype),
            ema,
        )
        return new, loss

    return step, loss_fn


# -- checkpoints and logs -------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file, fsync, rename, fsync dir."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_checkpoint(run_dir: Path, state: TrainState, elapsed: float, chash: str) -> None:
    host = jax.device_get(state)
    payload = {
        "format": 1,
        "config_hash": chash,
        "elapsed": float(elapsed),
        "step": int(host.step),
        "bad_total": int(host.bad_total),
        "params": serialization.to_state_dict(host.params),
        "opt_state": serialization.to_state_dict(host.opt_state),
    }
    if host.ema is not None:
        payload["ema"] = serialization.to_state_dict(host.ema)
    atomic_write_bytes(run_dir / CHECKPOINT, serialization.msgpack_serialize(payload))


def load_checkpoint(run_dir: Path, template: TrainState, chash: str):
    path = Path(run_dir) / CHECKPOINT
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise ValueError(f"no checkpoint in run directory {run_dir}") from None
    except Exception as err:
        raise ValueError(f"checkpoint {path} is unreadable: {err}") from None
    if payload.get("config_hash") != chash:
        raise ValueError(
            f"checkpoint {path} was written with a different config (variety/moduli/model/dtype changed)"
        )
    if template.ema is not None and "ema" not in payload:
        raise ValueError(
            f"checkpoint {path} holds no parameter average: the run was trained with train.ema_decay=0"
        )
    try:
        params = serialization.from_state_dict(template.params, payload["params"])
        opt_state = serialization.from_state_dict(template.opt_state, payload["opt_state"])
        ema = None if template.ema is None else serialization.from_state_dict(template.ema, payload["ema"])
    except Exception as err:
        raise ValueError(f"checkpoint {path} does not match the model of this config: {err}") from None
    step = payload["step"]
    as_arrays = lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)  # noqa: E731
    state = TrainState(
        jnp.asarray(step, jnp.int32),
        as_arrays(params),
        as_arrays(opt_state),
        jnp.asarray(0, jnp.int32),
        jnp.asarray(payload["bad_total"], jnp.int32),
        None if ema is None else as_arrays(ema),
    )
    return state, payload["elapsed"]


def read_metrics(run_dir: Path) -> list[dict]:
    """Records of metrics.jsonl; a torn last line (crash while writing) is dropped."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricsLog:
    """Append-only JSON-lines log, fsynced per record; on resume, records after the
    checkpoint step are dropped so no step appears twice."""

    def __init__(self, run_dir: Path, upto_step: int | None):
        self.path = Path(run_dir) / METRICS
        if upto_step is not None:
            keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= upto_step]
            atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in keep).encode())
        self.fh = open(self.path, "a")

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self):
        self.fh.close()


# -- the run --------------------------------------------------------------------------------


@dataclass
class FitResult:
    run_dir: Path
    params: Any  # the parameters to use: their moving average with train.ema_decay > 0
    steps: int
    elapsed: float
    stopped: str  # "steps", "time", "failed"
    summary: dict | None


def _new_run_dir(cfg: Config) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.out_dir) / f"{cfg.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path = Path(f"{base}-{i}")
        i += 1
    return path


def _mesh_shardings(batch_moduli: int):
    devices = jax.devices()
    if batch_moduli % len(devices):
        raise ConfigError(
            f"train.batch_moduli={batch_moduli} must be a multiple of the {len(devices)} visible devices"
        )
    mesh = jax.sharding.Mesh(np.asarray(devices), ("data",))
    P = jax.sharding.PartitionSpec
    return jax.sharding.NamedSharding(mesh, P("data")), jax.sharding.NamedSharding(mesh, P())


def fit(cfg: Config, resume: str | Path | None = None, progress: bool | None = None, evaluate: bool = True) -> FitResult:
    """Train according to ``cfg`` (or continue the run in ``resume``).

    Float64 runs execute inside ``jax.enable_x64(True)``: nothing global changes.
    """
    x64 = cfg.train.dtype == "float64"
    with jax.enable_x64(x64):
        return _fit(cfg, resume, progress, evaluate)


def _fit(cfg: Config, resume, progress, evaluate):
    from tqdm.auto import tqdm

    from . import evaluate as ev

    problem = build_problem(cfg)
    chash = config_hash(cfg)
    t = cfg.train
    run_dir = Path(resume) if resume else _new_run_dir(cfg)
    if resume:
        if not (run_dir / "config.yaml").is_file():
            raise ValueError(f"{run_dir} is not a cyflat run directory (no config.yaml)")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / CHECKPOINT).exists():
            raise ValueError(f"run directory {run_dir} already holds a run; use --resume {run_dir}")
        atomic_write_bytes(run_dir / "config.yaml", to_yaml(cfg).encode())

    key = jax.random.PRNGKey(t.seed)
    k_init, k_drop, k_val = jax.random.split(jax.random.fold_in(key, 1), 3)
    optimizer = make_optimizer(cfg)
    state = initial_state(cfg, init_params(cfg, problem, k_init), optimizer)
    elapsed0 = 0.0
    if resume:
        state, elapsed0 = load_checkpoint(run_dir, state, chash)
    start_step = int(state.step)

    batch_sharding, replicated = _mesh_shardings(t.batch_moduli)
    state = jax.device_put(state, replicated)
    sampler = ml.BatchSampler(
        t.seed, problem.variety, problem.moduli_sampler, batch_size_params=t.batch_moduli,
        batch_size=t.batch_points, buffer_size=t.buffer_size, device=batch_sharding,
        dtype=problem.cdtype, start_step=start_step,
    )
    step_fn, _ = make_train_step(problem, optimizer, k_drop, t.loss, t.ema_decay)
    step_jit = jax.jit(step_fn, donate_argnums=0)

    # Fixed validation set: moduli and points drawn once.
    n_val = 1 if cfg.moduli.region == "point" else t.val_moduli
    val_moduli = problem.moduli_sampler(k_val, n_val)
    if problem.variety.num_params and (cfg.moduli.region == "point" or problem.variety.known_singular_params() is None):
        check_moduli(problem.variety, np.asarray(val_moduli), what="training")
    val_sample = problem.variety.sample(jax.random.fold_in(k_val, 1), val_moduli, t.val_points, dtype=problem.cdtype)
    h_fn = h_function(problem)

    @jax.jit
    def val_sigma(params):
        h = h_fn(params, val_moduli)
        eta = problem.metric.eta(h, val_sample.zs, val_moduli, val_sample.patch, val_sample.dependent)
        return jnp.mean(sigma_from_eta(eta, val_sample.weights).value)

    log = MetricsLog(run_dir, start_step if resume else None)
    show = progress if progress is not None else None
    time_limit = t.time_limit if t.time_limit > 0 else math.inf
    bar = tqdm(
        total=t.steps, initial=start_step, desc=cfg.name, unit="step", disable=(not show) if show is not None else None,
        dynamic_ncols=True,
    )
    losses: list = []
    stopped = "steps"
    t_start = time.perf_counter() - elapsed0
    t_last, step_last = time.perf_counter(), start_step
    step = start_step
    last_val = None
    try:
        while step < t.steps:
            elapsed = time.perf_counter() - t_start
            if elapsed >= time_limit:
                stopped = "time"
                break
            batch = next(sampler)
            state, loss = step_jit(state, batch)
            losses.append(loss)
            step += 1
            bar.update(1)
            is_log = step % t.log_every == 0 or step == t.steps
            is_val = step % t.val_every == 0 or step == t.steps
            if is_log or is_val:
                now = time.perf_counter()
                loss_mean = float(jnp.mean(jnp.stack(losses)))
                losses = []
                rate = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                elapsed = now - t_start
                bad_streak, bad_total = int(state.bad_streak), int(state.bad_total)
                record = {
                    "step": step,
                    "loss": loss_mean,
                    "elapsed": round(elapsed, 3),
                    "steps_per_s": round(rate, 2),
                    "points_per_s": round(rate * t.batch_moduli * t.batch_points, 1),
                    "skipped_steps": bad_total,
                    "rejected_points": int(sampler.n_failed_total),
                }
                if is_val:
                    last_val = float(val_sigma(state.eval_params))
                    record["val_sigma"] = last_val
                left = (t.steps - step) / max(rate, 1e-9)
                left = min(left, time_limit - elapsed)
                bar.set_postfix(loss=f"{loss_mean:.3g}", val_sigma=f"{last_val:.4f}" if last_val is not None else "-",
                                steps_s=f"{rate:.0f}", left=f"{left:.0f}s")
                if bar.disable and is_val:
                    print(f"step {step}: loss {loss_mean:.4g}  val sigma {last_val:.4f}  {rate:.0f} steps/s  "
                          f"{elapsed:.0f}s elapsed, ~{left:.0f}s left", flush=True)
                if bad_streak:
                    import warnings

                    warnings.warn(f"step {step}: {bad_streak} consecutive non-finite steps skipped ({bad_total} in all)",
                                  stacklevel=2)
                log.write(record)
                if bad_streak >= t.max_bad_steps:
                    stopped = "failed"
                    break
            if step % t.checkpoint_every == 0 and int(state.bad_streak) == 0:
                save_checkpoint(run_dir, state, time.perf_counter() - t_start, chash)
        elapsed = time.perf_counter() - t_start
        if stopped == "failed":
            raise FloatingPointError(
                f"training stopped at step {step}: {int(state.bad_streak)} consecutive steps had a non-finite "
                f"loss or gradient; the last good checkpoint in {run_dir} is intact"
            )
        if losses:
            log.write({"step": step, "loss": float(jnp.mean(jnp.stack(losses))), "elapsed": round(elapsed, 3),
                       "val_sigma": float(val_sigma(state.eval_params)), "skipped_steps": int(state.bad_total),
                       "rejected_points": int(sampler.n_failed_total)})
        save_checkpoint(run_dir, state, elapsed, chash)
    finally:
        bar.close()
        log.close()

    params = jax.device_get(state.eval_params)
    summary = None
    if evaluate:
        summary = ev.evaluate_params(cfg, problem, params, run_dir, steps=step, elapsed=elapsed, stopped=stopped)
    return FitResult(run_dir, params, step, elapsed, stopped, summary)
