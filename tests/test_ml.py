"""Tests for cyflat.ml: Cholesky parametrisation, HNetMLP, BatchSampler, Monge-Ampere loss.

x64 is on for the session (conftest); float32 paths use explicit dtypes.  The sampler's
compilation dominates the run time, so one module-scoped sampler configuration (scan over
the buffer, the faster compile) is shared by the sampler and loss tests.
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cyflat
from cyflat import ml
from cyflat.metric import sigma_from_eta
from cyflat.projective import affine_to_hom
from cyflat.variety import newton_distance

# ------------------------------------------------------------------------------------------
# Cholesky parametrisation


def test_cholesky_hand_built_3x3_ordering():
    p = np.array([1.5, -2.0, 0.5, 0.1, 0.2, 0.3, -0.7, 0.8, -0.9])
    # diag (3), then Re upper, then Im upper; upper in triu_indices(3, 1) order:
    # (0,1), (0,2), (1,2).
    M = np.array(
        [
            [1.5, 0.1 - 0.7j, 0.2 + 0.8j],
            [0.0, -2.0, 0.3 - 0.9j],
            [0.0, 0.0, 0.5],
        ]
    )
    expected = M @ M.conj().T
    H = ml.cholesky_from_param(jnp.asarray(p))
    assert H.shape == (3, 3) and H.dtype == jnp.complex128
    np.testing.assert_allclose(np.asarray(H), expected, rtol=1e-14, atol=1e-14)
    H2 = ml.cholesky_decode(jnp.asarray(p[:3]), jnp.asarray(p[3:6] + 1j * p[6:]))
    np.testing.assert_allclose(np.asarray(H2), expected, rtol=1e-14, atol=1e-14)
    # triu_indices order, checked against numpy directly
    r, c = np.triu_indices(3, 1)
    assert list(zip(r, c)) == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_allclose(M[r, c], p[3:6] + 1j * p[6:])


def test_cholesky_hermitian_positive_definite_batched():
    N = 6
    p = np.random.default_rng(0).normal(size=(4, 3, N * N))
    p[..., :N] = np.abs(p[..., :N]) + 0.1  # non-zero diagonal
    H = np.asarray(ml.cholesky_from_param(p))
    assert H.shape == (4, 3, N, N)
    np.testing.assert_allclose(H, np.conj(np.swapaxes(H, -1, -2)), atol=1e-13)
    ev = np.linalg.eigvalsh(H)
    assert np.all(ev > 0), ev.min()
    # a sign flip of a diagonal entry of M changes M but keeps H PD (non-zero diagonal)
    q = p.copy()
    q[..., 0] *= -1
    assert np.all(np.linalg.eigvalsh(np.asarray(ml.cholesky_from_param(q))) > 0)


def test_cholesky_scaling_and_errors():
    p = jnp.arange(1.0, 17.0)
    np.testing.assert_allclose(
        np.asarray(ml.cholesky_from_param(3 * p)), 9 * np.asarray(ml.cholesky_from_param(p)), rtol=1e-13
    )
    with pytest.raises(ValueError, match="perfect square"):
        ml.cholesky_from_param(jnp.ones(8))
    with pytest.raises(ValueError, match="real"):
        ml.cholesky_from_param(jnp.ones(9, jnp.complex128))
    assert ml.cholesky_from_param(jnp.ones(1)).shape == (1, 1)
    # float32 in -> complex64 out
    H32 = ml.cholesky_from_param(jnp.ones(9, jnp.float32))
    assert H32.dtype == jnp.complex64


def test_hermitian_param_init_identity_and_fluctuation():
    for dtype, N in [(jnp.float64, 5), (jnp.float32, 3), (float, 1)]:
        p = ml.hermitian_param_init(None, N, dtype=dtype)
        assert p.shape == (N * N,) and p.dtype == jnp.result_type(dtype)
        np.testing.assert_array_equal(np.asarray(ml.cholesky_from_param(p)), np.eye(N))
    key = jax.random.PRNGKey(3)
    N = 400
    p = np.asarray(ml.hermitian_param_init(key, N, fluctuate=0.1))
    assert np.all(p[N:] == 0)
    assert abs(p[:N].mean() - 1) < 0.02 and abs(p[:N].std() - 0.1) < 0.02
    np.testing.assert_array_equal(p, np.asarray(ml.hermitian_param_init(key, N, fluctuate=0.1)))
    with pytest.raises(ValueError):
        ml.hermitian_param_init(None, 0)


def test_cholesky_jit_vmap_grad_finite_differences():
    N = 4
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.normal(size=N * N))
    A = jnp.asarray(rng.normal(size=(N, N)) + 1j * rng.normal(size=(N, N)))
    ps = jnp.stack([p, 2 * p, p + 1])

    np.testing.assert_allclose(jax.jit(ml.cholesky_from_param)(p), ml.cholesky_from_param(p), rtol=1e-14)
    np.testing.assert_allclose(
        jax.vmap(ml.cholesky_from_param)(ps), ml.cholesky_from_param(ps), rtol=1e-14, atol=1e-14
    )
    np.testing.assert_allclose(
        jax.vmap(ml.cholesky_decode)(ps[:, :N], ps[:, N : N + 6] + 1j * ps[:, N + 6 :]),
        ml.cholesky_from_param(ps),
        rtol=1e-14,
        atol=1e-14,
    )

    def f(q):
        H = ml.cholesky_from_param(q)
        return jnp.real(jnp.trace(A @ H)) + jnp.sum(jnp.abs(H) ** 2) / 10

    g = jax.jit(jax.grad(f))(p)
    assert np.all(np.isfinite(g))
    eps = 1e-6
    E = eps * jnp.eye(N * N)
    fv = jax.jit(jax.vmap(f))
    fd = (fv(p + E) - fv(p - E)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------
# HNetMLP


def test_hnet_num_features_and_input_size():
    assert ml.HNetMLP.num_features(1) == 3
    assert ml.HNetMLP.num_features(2) == 15
    assert ml.HNetMLP.num_features(1, powers=(2,)) == 1
    assert ml.HNetMLP.num_features(2, powers=(1, 1, 0)) == 3
    net = ml.HNetMLP(basis_size=3, layer_sizes=(8,))
    assert net.input_size(1) == 1 + 3 + 6
    assert net.input_size(2) == 2 + 15 + 30
    for m in (1, 2):
        variables = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.ones((m,), jnp.complex128))
        assert variables["params"]["hidden_0"]["kernel"].shape == (net.input_size(m), 8)
    psi = jnp.ones((1,), jnp.complex128)
    for bad, match in (
        (dict(powers=()), "powers"), (dict(powers=(0,)), "powers"), (dict(layer_sizes=(0,)), "layer_sizes"),
        (dict(dropout_rate=1.5), "dropout_rate"),
    ):
        with pytest.raises(ValueError, match=match):
            ml.HNetMLP(basis_size=3, **bad).init(jax.random.PRNGKey(0), psi)
    with pytest.raises(ValueError, match="at least one modulus"):
        ml.HNetMLP(basis_size=3).init(jax.random.PRNGKey(0), jnp.zeros((0,), jnp.complex128))
    net2 = ml.HNetMLP(basis_size=3, layer_sizes=(8,), feature_angle=False, feature_abs=False)
    assert net2.input_size(2) == 30
    variables = jax.eval_shape(net2.init, jax.random.PRNGKey(0), jnp.ones((2,), jnp.complex128))
    assert variables["params"]["hidden_0"]["kernel"].shape == (30, 8)


def test_power_features_products():
    psi = jnp.array([0.3 + 0.4j, -0.7 + 0.1j])
    f = np.asarray(ml._power_features(psi, (1, 2, 3)))
    a, b = np.asarray(psi)
    expected = {a**i * b**j for i in range(4) for j in range(4) if i or j}
    assert f.shape == (15,)
    for e in expected:
        assert np.min(np.abs(f - e)) < 1e-14


def _randomise_final(params, scale=0.5, seed=1):
    """Copy of the params with a random final kernel (at init it is 0, hiding the hidden layers)."""
    params = dict(params)
    kernel = params["final"]["kernel"]
    noise = np.random.default_rng(seed).normal(size=kernel.shape)
    params["final"] = {"kernel": jnp.asarray(scale * noise, kernel.dtype), "bias": params["final"]["bias"]}
    return params


@pytest.mark.parametrize("sig_suppress", [True, False])
def test_hnet_shapes_identity_at_init_and_dropout(sig_suppress):
    N = 5
    net = ml.HNetMLP(
        basis_size=N, layer_sizes=(16, 16), sig_suppress=sig_suppress, dropout_rate=0.3, param_dtype=jnp.float64
    )
    psi1 = jnp.array([0.2 + 0.1j, -0.3j])
    rng = np.random.default_rng(2)
    psiP = jnp.asarray(rng.normal(size=(7, 2)) + 1j * rng.normal(size=(7, 2)))

    @jax.jit
    def run(psi1, psiP, kernel):
        variables = net.init(jax.random.PRNGKey(0), psi1)
        out1 = net.apply(variables, psi1)
        outP = net.apply(variables, psiP)
        params = dict(variables["params"])
        params["final"] = {"kernel": kernel, "bias": params["final"]["bias"]}
        det = net.apply({"params": params}, psiP)
        det2 = net.apply({"params": params}, psiP, deterministic=True)
        drop = net.apply({"params": params}, psiP, deterministic=False, rngs={"dropout": jax.random.PRNGKey(2)})
        return variables, out1, outP, det, det2, drop

    shape = (16, (2 if sig_suppress else 1) * N * N)
    variables, out1, outP, det, det2, drop = run(psi1, psiP, jnp.asarray(rng.normal(size=shape)))
    assert out1.shape == (N * N,) and outP.shape == (7, N * N)
    assert out1.dtype == jnp.float64 and outP.dtype == jnp.float64
    ident = np.asarray(ml.hermitian_param_init(None, N))
    np.testing.assert_array_equal(np.asarray(out1), ident)
    np.testing.assert_array_equal(np.asarray(outP), np.broadcast_to(ident, (7, N * N)))
    np.testing.assert_array_equal(np.asarray(ml.cholesky_from_param(outP)), np.broadcast_to(np.eye(N), (7, N, N)))
    final = variables["params"]["final"]
    assert final["kernel"].shape == shape
    assert np.all(np.asarray(final["kernel"]) == 0)
    # dropout: off by default, on with deterministic=False and a 'dropout' rng
    np.testing.assert_array_equal(np.asarray(det), np.asarray(det2))
    assert np.abs(np.asarray(det - outP)).max() > 1e-3  # hidden layers reach the output
    assert np.abs(np.asarray(drop - det)).max() > 1e-6


def test_hnet_init_fluctuation():
    N = 6
    psiP = jnp.asarray(np.random.default_rng(3).normal(size=(4, 1)) + 0j)
    net = ml.HNetMLP(basis_size=N, layer_sizes=(8,), init_fluctuation=0.1, param_dtype=jnp.float64)
    of = np.asarray(jax.jit(lambda p: net.apply(net.init(jax.random.PRNGKey(4), p), p))(psiP))
    # still independent of psi, off-diagonal parameters exactly 0, diagonal near 1
    assert np.all(of[:, N:] == 0) and np.all(of == of[0])
    assert 0 < np.abs(of[0, :N] - 1).max() < 0.6


def test_hnet_float32_large_moduli_not_saturated():
    N = 4
    psi = (100.0 * jnp.exp(1j * jnp.linspace(0, 6, 9))).astype(jnp.complex64)[:, None]  # (9, 1)
    nets = [
        ml.HNetMLP(basis_size=N, layer_sizes=(32, 32), moduli_scale=scale, param_dtype=jnp.float32)
        for scale in (100.0, 1.0)
    ]

    @jax.jit
    def run(kernel):
        results = []
        for net in nets:
            params = dict(net.init(jax.random.PRNGKey(0), psi)["params"])
            params["final"] = {"kernel": kernel, "bias": params["final"]["bias"]}
            out, inter = net.apply({"params": params}, psi, capture_intermediates=True)
            pre = inter["intermediates"]["hidden_0"]["__call__"][0]
            g = jax.grad(lambda p: jnp.sum(net.apply({"params": p}, psi) ** 2))(params)["hidden_0"]["kernel"]
            results.append((out, pre, g))
        return results

    kernel = jnp.asarray(0.5 * np.random.default_rng(1).normal(size=(32, 2 * N * N)), jnp.float32)
    (out, pre, g), (_, pre_raw, _) = run(kernel)
    assert out.dtype == jnp.float32 and out.shape == (9, N * N)
    assert np.all(np.isfinite(np.asarray(out))) and np.all(np.isfinite(np.asarray(g)))
    assert np.abs(np.asarray(pre)).max() < 10  # sigmoid far from saturation
    assert np.abs(np.asarray(g)).max() > 1e-4
    assert np.std(np.asarray(out), axis=0).max() > 1e-3  # output depends on psi
    # without rescaling psi^3 ~ 1e6: the first layer saturates
    assert np.abs(np.asarray(pre_raw)).max() > 1e3


# ------------------------------------------------------------------------------------------
# BatchSampler (one shared configuration: compile once).  The Dwork cubic curve
# sum z_i^3 - 3 psi z0 z1 z2 (a torus) keeps compilation short; nothing below depends on
# the dimension.

DWORK = cyflat.Dwork(1)
P, B, S = 2, 48, 3


def psi_disk(key, n):
    return cyflat.random.uniform_unit_disk(key, (n, 1), radius=0.5, dtype=jnp.complex128)


def make_sampler(seed, **kwargs):
    return ml.BatchSampler(
        seed, DWORK, psi_disk, batch_size_params=P, batch_size=B, buffer_size=S, dtype=jnp.complex128, **kwargs
    )


@pytest.fixture(scope="module")
def sampled():
    sampler = make_sampler(7)
    first = next(sampler)
    cache = ml._fill_buffer._cache_size()
    batches = [first] + [sampler.next() for _ in range(2 * S + 1)]  # crosses two refills
    return sampler, batches, cache


def test_sampler_shapes_dtypes(sampled):
    sampler, batches, _ = sampled
    params, zs, patch, weights = batches[0]
    assert params.shape == (P, 1) and params.dtype == jnp.complex128
    assert zs.shape == (P, B, 2) and zs.dtype == jnp.complex128
    assert patch.shape == (P, B) and patch.dtype == jnp.int32
    assert weights.shape == (P, B) and weights.dtype == jnp.float64
    assert np.all(np.abs(np.asarray(params)) <= 0.5)
    assert np.all(np.asarray(weights) >= 0) and np.mean(np.asarray(weights) > 0) > 0.95
    assert sampler.n_points_total == len(batches) * P * B
    assert sampler.n_failed_total >= 0 and sampler.last_n_failed.shape == (P,)
    assert iter(sampler) is sampler


def test_sampler_points_on_variety(sampled):
    _, batches, _ = sampled

    @jax.jit
    def distance(params, zs, patch):
        zh = affine_to_hom(zs, patch)
        pp = params[..., None, :]
        return newton_distance(DWORK.defining(zh, pp), DWORK.grad_defining(zh, pp), zh)

    params, zs, patch, weights = (jnp.stack(x) for x in zip(*batches))
    dist = np.asarray(distance(params, zs, patch))
    ok = np.asarray(weights) > 0
    assert dist[ok].max() < 1e-10
    # affine coordinates in the default patch have modulus <= 1
    assert np.abs(np.asarray(zs)).max() <= 1 + 1e-12


def test_sampler_refill_without_recompile(sampled):
    sampler, batches, cache = sampled
    assert sampler.compile_count == 1
    assert ml._fill_buffer._cache_size() == cache
    assert sampler.refills >= 3
    # batches differ across the buffer and across refills
    zs = [np.asarray(b[1]) for b in batches]
    for i in range(len(zs) - 1):
        assert not np.array_equal(zs[i], zs[i + 1])
    for _ in range(3 * S):
        jax.block_until_ready(next(sampler))
    assert sampler.compile_count == 1 and ml._fill_buffer._cache_size() == cache


def test_sampler_reproducible(sampled):
    _, batches, _ = sampled
    again = make_sampler(7, prefetch=False)  # same configuration: no new compile
    for b in batches:
        for x, y in zip(b, next(again)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    other = next(make_sampler(8))
    assert not np.array_equal(np.asarray(other[1]), np.asarray(batches[0][1]))
    assert again.compile_count == 1
    # resuming the stream: start_step skips batches without sampling them
    for start in (1, S, S + 2):
        resumed = make_sampler(7, start_step=start, prefetch=start != S)
        for b in batches[start : start + 2]:
            for x, y in zip(b, next(resumed)):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert resumed.n_points_total == 2 * P * B
    # the n_failed total is the sum of the per-batch counts
    counter = make_sampler(7)
    total = 0
    for _ in range(2 * S + 1):
        next(counter)
        total += int(np.sum(np.asarray(counter.last_n_failed)))
    assert counter.n_failed_total == total


def test_sampler_device_and_errors(sampled):
    _, batches, _ = sampled
    dev = jax.devices()[0]
    s = make_sampler(7, device=dev)
    params, zs, patch, weights = next(s)
    assert zs.devices() == {dev}
    np.testing.assert_array_equal(np.asarray(zs), np.asarray(batches[0][1]))
    s2 = make_sampler(7, device=jax.sharding.SingleDeviceSharding(dev))
    assert next(s2)[1].devices() == {dev}
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    named = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    b3 = next(make_sampler(7, device=named))
    assert b3[1].shape == (P, B, 2) and b3[1].devices() == {dev}
    np.testing.assert_array_equal(np.asarray(b3[3]), np.asarray(batches[0][3]))
    with pytest.raises(ValueError):
        ml.BatchSampler(0, DWORK, psi_disk, batch_size=0)
    with pytest.raises(ValueError):
        ml.BatchSampler(0, DWORK, None)


def test_sampler_float32_shapes():
    # the buffer-filling function in complex64, traced but not compiled
    batches, failed = jax.eval_shape(
        ml._fill_buffer, jax.random.PRNGKey(0), DWORK, psi_disk, 3, 10, 4, jnp.dtype(jnp.complex64)
    )
    assert len(batches) == 4 and failed.shape == (4,)
    for params, zs, patch, weights, n_failed in batches:
        assert params.shape == (3, 1) and params.dtype == jnp.complex64
        assert zs.shape == (3, 10, 2) and zs.dtype == jnp.complex64
        assert patch.shape == (3, 10) and patch.dtype == jnp.int32
        assert weights.shape == (3, 10) and weights.dtype == jnp.float32
        assert n_failed.shape == (3,)


# ------------------------------------------------------------------------------------------
# Monge-Ampere loss


@jax.tree_util.register_pytree_node_class
class FakeMetric:
    """eta = scale(h) * values with scale(h) = Re tr(h) / N (a pytree: ``values`` is a leaf)."""

    def __init__(self, values, use_h=True):
        self.values = jnp.asarray(values)
        self.use_h = use_h

    def eta(self, h, zs, params, patch, dependent=None):
        if not self.use_h:
            return self.values
        return jnp.real(jnp.trace(h)) / h.shape[-1] * self.values

    def tree_flatten(self):
        return (self.values,), self.use_h

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        return cls(leaves[0], aux)


loss_jit = jax.jit(ml.variance_eta_loss)


def fake_sample(Bn, weights=None):
    zs = jnp.full((Bn, 4), 0.1 + 0.2j)
    w = jnp.ones(Bn) if weights is None else jnp.asarray(weights, jnp.float64)
    return (jnp.array([0.1 + 0j]), zs, jnp.zeros(Bn, jnp.int32), w)


def reference_loss(eta, w, c=ml.NEGATIVE_ETA_PENALTY):
    eta, w = np.asarray(eta), np.asarray(w)
    eta_bar = np.sum(w * eta) / np.sum(w)
    x = eta / abs(eta_bar)
    return np.sum(w * (x - 1) ** 2) / np.sum(w) + c * np.sum(w * np.maximum(-x, 0) ** 2) / np.sum(w)


H3 = jnp.eye(3, dtype=jnp.complex128)


def test_loss_zero_for_constant_eta_and_formula():
    h = 2.5 * H3
    assert abs(float(loss_jit(h, fake_sample(5), FakeMetric(jnp.full(5, 3.3))))) < 1e-28
    eta = jnp.array([1.0, 2.0, 0.5, 1.5, 3.0])
    w = jnp.array([0.2, 1.0, 0.7, 0.1, 0.4])
    val = loss_jit(h, fake_sample(5, w), FakeMetric(eta))
    np.testing.assert_allclose(float(val), reference_loss(eta, w), rtol=1e-13)
    # invariant under w -> c w
    val2 = loss_jit(h, fake_sample(5, 7 * w), FakeMetric(eta))
    np.testing.assert_allclose(float(val2), float(val), rtol=1e-13)


def test_loss_penalises_negative_eta():
    w = jnp.ones(5)
    pos = jnp.array([1.0, 2.0, 0.5, 1.5, 3.0])
    neg = pos.at[2].set(-0.5)
    for c in (0.0, 1.0):  # no penalty without negative eta
        np.testing.assert_allclose(
            float(loss_jit(H3, fake_sample(5, w), FakeMetric(pos), c)), reference_loss(pos, w, 0.0), rtol=1e-13
        )
    base = float(loss_jit(H3, fake_sample(5, w), FakeMetric(neg), 0.0))
    full = float(loss_jit(H3, fake_sample(5, w), FakeMetric(neg)))
    np.testing.assert_allclose(full, reference_loss(neg, w), rtol=1e-13)
    x = -0.5 / float(np.mean(np.asarray(neg)))
    np.testing.assert_allclose(full - base, ml.NEGATIVE_ETA_PENALTY * x**2 / 5, rtol=1e-12)
    more = float(loss_jit(H3, fake_sample(5, w), FakeMetric(pos.at[2].set(-1.5))))
    assert more > full > base
    # the penalty pushes negative eta up: its gradient is negative
    g = jax.grad(lambda e: loss_jit(H3, fake_sample(5, w), FakeMetric(e, use_h=False)))(neg)
    g0 = jax.grad(lambda e: loss_jit(H3, fake_sample(5, w), FakeMetric(e, use_h=False), 0.0))(neg)
    assert g[2] < g0[2] < 0


def test_loss_masks_bad_points_fake_metric():
    eta = jnp.array([1.0, jnp.nan, 0.5, jnp.inf, 3.0, 2.0, -jnp.inf])
    w = jnp.array([1.0, 1.0, 0.5, 1.0, 0.0, 2.0, 0.0])
    keep = np.array([0, 2, 5])
    expected = reference_loss(np.asarray(eta)[keep], np.asarray(w)[keep])

    # value and gradient with respect to eta itself (the double-where)
    val, g = jax.value_and_grad(lambda e: loss_jit(H3, fake_sample(7, w), FakeMetric(e, use_h=False)))(eta)
    np.testing.assert_allclose(float(val), expected, rtol=1e-13)
    g = np.asarray(g)
    assert np.all(np.isfinite(g)) and np.all(g[[1, 3, 4, 6]] == 0) and np.all(g[keep] != 0)

    # negative weights count as rejected too
    w2 = w.at[6].set(-1.0)
    np.testing.assert_allclose(float(loss_jit(H3, fake_sample(7, w2), FakeMetric(eta))), expected, rtol=1e-13)
    # a non-finite weight is a corrupted sample: NaN loss (so training can skip the
    # batch), with a finite gradient
    for bad in (jnp.nan, jnp.inf):
        val, g = jax.value_and_grad(lambda e: loss_jit(H3, fake_sample(7, w.at[4].set(bad)), FakeMetric(e, False)))(eta)
        assert np.isnan(float(val)) and np.all(np.isfinite(np.asarray(g)))
    # all points bad: 0, not NaN
    assert float(loss_jit(H3, fake_sample(7, jnp.zeros(7)), FakeMetric(eta))) == 0.0


def test_sigma_loss_formula_masking_and_penalty():
    h = 2.5 * H3
    sigma_jit = jax.jit(ml.sigma_loss)
    assert abs(float(sigma_jit(h, fake_sample(5), FakeMetric(jnp.full(5, 3.3))))) < 1e-15
    eta = jnp.array([1.0, jnp.nan, 0.5, -0.25, 3.0, 2.0])
    w = jnp.array([1.0, 1.0, 0.5, 1.0, 0.0, 2.0])
    keep = np.array([0, 2, 3, 5])
    e, ww = np.asarray(eta)[keep], np.asarray(w)[keep]
    x = e / abs(np.sum(ww * e) / np.sum(ww))
    expected = np.sum(ww * np.abs(x - 1)) / np.sum(ww) + ml.NEGATIVE_ETA_PENALTY * np.sum(
        ww * np.maximum(-x, 0) ** 2
    ) / np.sum(ww)
    for c in (1.0, 7.0):  # invariant under H -> c H (FakeMetric's eta scales with tr H)
        np.testing.assert_allclose(float(sigma_jit(c * h, fake_sample(6, w), FakeMetric(eta))), expected, rtol=1e-13)
    assert ml.LOSSES == {"variance": ml.variance_eta_loss, "sigma": ml.sigma_loss}


def test_sigma_loss_equals_the_sigma_estimate(sampled):
    """On a real metric with positive eta the loss IS the Monte Carlo sigma of the batch."""
    _, batches, _ = sampled
    am = cyflat.AlgebraicMetric(DWORK, cyflat.MonomialBasisFull(2, 2))
    params, zs, patch, weights = batches[0]
    h = ml.cholesky_from_param(ml.hermitian_param_init(jax.random.PRNGKey(3), am.basis_size, 0.2))
    loss = jax.jit(ml.sigma_loss, static_argnums=2)(h, (params[0], zs[0], patch[0], weights[0]), am)
    eta = am.eta(h, zs[0], params[0], patch[0])
    assert float(jnp.min(eta)) > 0
    np.testing.assert_allclose(float(loss), float(sigma_from_eta(eta, weights[0]).value), rtol=1e-12)


@pytest.fixture(scope="module")
def metric_problem(sampled):
    """Real metric, k = 2 (N = 6), a fixed batch of P moduli and ONE compiled
    value-and-gradient of the batch loss w.r.t. per-moduli Cholesky parameters (P, N^2)
    (``vg``: -> (loss, grad)); ``vg_eta`` also returns eta (P, B) (same compilation)."""
    _, batches, _ = sampled
    am = cyflat.AlgebraicMetric(DWORK, cyflat.MonomialBasisFull(2, 2))
    batch = batches[0]
    N = am.basis_size

    def batch_loss(h_pars, batch):
        hs = ml.cholesky_from_param(h_pars)
        params, zs, patch, _ = batch
        loss = jnp.mean(jax.vmap(ml.variance_eta_loss, in_axes=(0, 0, None))(hs, batch, am))
        return loss, am.eta(hs, zs, params, patch)

    vg_eta = jax.jit(jax.value_and_grad(batch_loss, has_aux=True))

    def vg(h_pars, batch):
        (val, _), grad = vg_eta(h_pars, batch)
        return val, grad

    return am, batch, N, vg, vg_eta


def _tile(h_par):
    return jnp.broadcast_to(h_par, (P,) + h_par.shape)


def test_loss_real_metric_scale_invariance_and_gradient(metric_problem):
    am, batch, N, vg, vg_eta = metric_problem
    rng = np.random.default_rng(5)
    h_pars = _tile(ml.hermitian_param_init(None, N)) + 0.1 * rng.normal(size=(P, N * N))
    v1, g1 = vg(h_pars, batch)
    v2, g2 = vg(h_pars * np.sqrt(3.7), batch)  # H -> 3.7 H
    assert float(v1) > 1e-4
    np.testing.assert_allclose(float(v2), float(v1), rtol=1e-10)
    assert g1.shape == (P, N * N)
    assert np.all(np.isfinite(np.asarray(g1))) and np.abs(np.asarray(g1)).max() > 0
    # the gradient treats eta_bar as a constant: compare with a finite difference of
    # the loss with eta_bar frozen, built from the metric's eta directly
    w = np.asarray(batch[3])

    def eta_fn(hp):
        return np.asarray(vg_eta(hp, batch)[0][1])

    def frozen(hp, eta_bar):
        x = eta_fn(hp) / eta_bar[:, None]
        return np.mean(np.sum(w * (x - 1) ** 2, axis=1) / np.sum(w, axis=1))

    eta0 = eta_fn(h_pars)
    assert np.all(np.asarray(eta0) > 0)
    eta_bar = np.sum(w * eta0, axis=1) / np.sum(w, axis=1)
    np.testing.assert_allclose(frozen(h_pars, eta_bar), float(v1), rtol=1e-12)
    d = rng.normal(size=(P, N * N))
    eps = 1e-5
    fd = (frozen(h_pars + eps * d, eta_bar) - frozen(h_pars - eps * d, eta_bar)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.sum(g1 * d)), float(fd), rtol=1e-6)


def test_loss_bad_points_real_metric(metric_problem):
    am, batch, N, vg, _ = metric_problem
    params, zs, patch, weights = batch
    h_pars = _tile(ml.hermitian_param_init(None, N))
    # zero weights, NaN and inf coordinates (with positive weight) on the first 5 points
    bad_zs = zs.at[:, 3].set(jnp.nan).at[:, 4].set(jnp.inf + 0j)
    bad_w = weights.at[:, :3].set(0.0)
    v_bad, g_bad = vg(h_pars, (params, bad_zs, patch, bad_w))
    assert np.isfinite(float(v_bad)) and np.all(np.isfinite(np.asarray(g_bad)))
    # equals the loss with those points given weight 0 at their original (good) positions
    v_ref, g_ref = vg(h_pars, (params, zs, patch, weights.at[:, :5].set(0.0)))
    np.testing.assert_allclose(float(v_bad), float(v_ref), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g_bad), np.asarray(g_ref), rtol=1e-9, atol=1e-12)


def _adam(loss_and_grad, params, steps=50, lr=0.02):
    opt = optax.adam(lr)
    state = opt.init(params)
    update = jax.jit(opt.update)
    losses = []
    for _ in range(steps):
        val, g = loss_and_grad(params)
        upd, state = update(g, state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, upd)
        losses.append(float(val))
    losses = np.array(losses)
    assert np.all(np.isfinite(losses))
    return losses


def test_loss_decreases_with_adam_free_h(metric_problem):
    _, batch, N, vg, _ = metric_problem
    # one H shared by the P moduli values of the fixed batch
    losses = _adam(lambda hp: (lambda v, g: (v, g.sum(0)))(*vg(_tile(hp), batch)), ml.hermitian_param_init(None, N))
    assert np.mean(losses[-5:]) < 0.8 * losses[0], (losses[0], losses[-5:])


def test_loss_decreases_with_adam_hnet(metric_problem):
    _, batch, N, vg, _ = metric_problem
    psi = batch[0]
    net = ml.HNetMLP(basis_size=N, layer_sizes=(16, 16), moduli_scale=0.5, param_dtype=jnp.float64)
    net_params = jax.jit(net.init)(jax.random.PRNGKey(0), psi)
    forward = jax.jit(net.apply)

    @jax.jit
    def net_vjp(p, cotangent):
        return jax.vjp(lambda q: net.apply(q, psi), p)[1](cotangent)[0]

    def loss_and_grad(p):
        # chain rule split in two compiled pieces (the loss's compilation is shared)
        val, g_h = vg(forward(p, psi), batch)
        return val, net_vjp(p, g_h)

    losses = _adam(loss_and_grad, net_params)
    assert np.mean(losses[-5:]) < 0.8 * losses[0], (losses[0], losses[-5:])


def test_loss_names_the_sample_tuple():
    """A cyflat ``Sample`` (5 fields) is not the loss's (params, zs, patch, weights) tuple."""
    X = cyflat.Fermat(1)
    s = X.sample(jax.random.PRNGKey(0), None, 12)
    metric = cyflat.AlgebraicMetric(X, cyflat.MonomialBasisFull(2, 1))
    with pytest.raises(ValueError, match=r"\(params, zs, patch, weights\)"):
        ml.variance_eta_loss(H3, s, metric)
    loss = ml.variance_eta_loss(H3, (jnp.zeros((0,)), s.zs, s.patch, s.weights), metric)
    assert np.isfinite(float(loss))
