"""Donaldson's algorithm: T-operator, balanced iteration, reference sigma values.

Reference values (shared/spec/reference.md): balanced metrics on the Fermat quintic,
reduced basis, f64, 10 iterations, 10 N_k^2 + 50 000 points per step, sigma on 10^5
fresh points: k = 2: 0.273, k = 3: 0.194, k = 4: 0.131 (+- about 0.002).
"""

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cyflat
from cyflat import donaldson as D

KEY = jax.random.PRNGKey(20240611)
FERMAT = cyflat.Fermat(3)
NO_PARAMS = jnp.zeros((0,), jnp.complex128)
REFERENCE = {2: 0.273, 3: 0.194, 4: 0.131}


def _points(count, key=KEY):
    """Fermat quintic points (complex128) through the driver's chunked sampler (one compile)."""
    zs, patch, dependent, w, _ = D._sample_points(FERMAT, key, NO_PARAMS, count, jnp.complex128)
    return zs, patch, dependent, w


def _basis(k):
    # check=False: the Gram-rank test compiles a sampler of its own (tested in test_sections)
    return cyflat.MonomialBasisReduced(FERMAT, k, NO_PARAMS, check=False)


def _random_h(N, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(N, N)) + 1j * rng.normal(size=(N, N))
    return a @ a.conj().T / N + np.eye(N)


def _dense_t(S, h, w):
    N = S.shape[1]
    phi = np.real(np.einsum("pa,ab,pb->p", S, h, S.conj()))
    return N / w.sum() * np.einsum("p,pa,pb->ab", w / phi, S, S.conj())


# -- T-operator ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_sample():
    zs, patch, _, w = _points(3001)
    return zs, patch, w


@pytest.mark.parametrize("k, batch_sizes", [(2, (256, 1000)), pytest.param(3, (None, 999), marks=pytest.mark.slow)])
def test_t_operator_matches_dense(small_sample, k, batch_sizes):
    zs, patch, w = small_sample
    basis = _basis(k)
    h = _random_h(basis.size, seed=k)
    S = np.asarray(basis(zs, patch))
    dense = _dense_t(S, h, np.asarray(w))
    scale = np.abs(dense).max()
    for batch_size in batch_sizes:  # None: one batch of 3001 points; 256, 999, 1000 do not divide 3001
        t = np.asarray(D.t_operator(basis, h, zs, patch, w, batch_size=batch_size))
        assert t.dtype == np.complex128
        np.testing.assert_allclose(t, dense, rtol=0, atol=1e-12 * scale, err_msg=f"batch_size={batch_size}")
        np.testing.assert_array_equal(t, t.conj().T)  # hermitian by construction
        # trace identity: sum_ab T_ab H_ab = tr(T H^T) = N exactly (phi = s^T H conj s)
        assert abs(np.sum(t * h) - basis.size) < 1e-12 * basis.size


def test_t_operator_zero_weights_ignored(small_sample):
    zs, patch, w = small_sample
    basis = _basis(2)
    h = _random_h(basis.size, seed=5)
    dense = _dense_t(np.asarray(basis(zs[:2000], patch[:2000])), h, np.asarray(w[:2000]))
    t = np.asarray(D.t_operator(basis, h, zs, patch, w.at[2000:].set(0.0), batch_size=1000))
    np.testing.assert_allclose(t, dense, rtol=0, atol=1e-12 * np.abs(dense).max())


def test_t_operator_float32(small_sample):
    zs, patch, w = small_sample
    basis = _basis(2)
    h = _random_h(basis.size, seed=3)
    t64 = np.asarray(D.t_operator(basis, h, zs, patch, w, batch_size=1000))
    t32 = D.t_operator(basis, h.astype(np.complex64), zs.astype(jnp.complex64), patch, w.astype(jnp.float32),
                       batch_size=1000)
    assert t32.dtype == jnp.complex64
    np.testing.assert_allclose(np.asarray(t32), t64, rtol=0, atol=2e-5 * np.abs(t64).max())


def test_t_operator_jittable_and_cH_scaling(small_sample):
    zs, patch, w = small_sample
    basis = _basis(2)
    h = jnp.asarray(_random_h(basis.size, seed=4))
    f = jax.jit(lambda h, zs, w: D.t_operator(basis, h, zs, patch, w, batch_size=1000))
    t1 = np.asarray(f(h, zs, w))
    t3 = np.asarray(f(3.0 * h, zs, w))
    np.testing.assert_allclose(3.0 * t3, t1, rtol=1e-12, atol=1e-14)


def test_t_operator_input_checks(small_sample):
    zs, patch, w = small_sample
    basis = _basis(2)
    with pytest.raises(ValueError, match="h must have shape"):
        D.t_operator(basis, np.eye(3), zs, patch, w)
    with pytest.raises(ValueError, match="zs must be"):
        D.t_operator(basis, np.eye(basis.size), zs[:, :3], patch, w)
    with pytest.raises(ValueError, match="weights"):
        D.t_operator(basis, np.eye(basis.size), zs, patch, w[:10])
    with pytest.raises(ValueError, match="batch_size"):
        D.t_operator(basis, np.eye(basis.size), zs, patch, w, batch_size=0)


def test_t_identity_k1_fermat_is_identity():
    """Fermat quintic, k = 1, H = 1: the phase symmetries z_i -> e^{2 pi i m_i/5} z_i
    kill the off-diagonal entries and the permutations equalise the diagonal, so with
    tr T = N exactly, T(1) = 1 exactly; the estimate agrees within its Monte Carlo error."""
    basis = _basis(1)
    N = basis.size
    zs, patch, _, w = _points(D.default_n_points(N))  # the driver's shapes: compiled once
    t = np.asarray(D.t_operator(basis, np.eye(N), zs, patch, w))
    assert abs(np.trace(t) - N) < 1e-12
    # Ratio-estimator standard error of every entry (points of one line are correlated,
    # hence the generous 6 standard errors on the max over 25 complex entries).
    S = np.asarray(basis(zs, patch))
    wn = np.asarray(w)
    f = N * S[:, :, None] * S.conj()[:, None, :] / np.sum(np.abs(S) ** 2, axis=1)[:, None, None]
    resid = wn[:, None, None] * (f - t[None])
    se_re = np.sqrt(np.sum(resid.real**2, axis=0)) / wn.sum()
    se_im = np.sqrt(np.sum(resid.imag**2, axis=0)) / wn.sum()
    dev = t - np.eye(N)
    assert np.all(np.abs(dev.real) <= 6 * se_re + 1e-14), (dev, se_re)
    assert np.all(np.abs(dev.imag) <= 6 * se_im + 1e-14), (dev, se_im)
    assert np.max(se_re) < 0.03  # the check is meaningful


# -- balanced update and singular T -------------------------------------------------------


def test_balanced_update_inverts_transpose():
    h = _random_h(7, seed=11)
    t = np.linalg.inv(h).T * 0.5
    h_new, cond = D.balanced_update(t)
    np.testing.assert_allclose(h_new, h * 7 / np.trace(h).real, rtol=1e-12)
    assert np.isclose(np.trace(h_new), 7)
    assert cond == pytest.approx(np.linalg.cond(t), rel=1e-8)


def test_singular_t_identical_points(small_sample):
    zs, patch, w = small_sample
    basis = _basis(2)
    same = jnp.broadcast_to(zs[:1], zs.shape)
    t = D.t_operator(basis, np.eye(basis.size), same, jnp.broadcast_to(patch[:1], patch.shape), w)
    with pytest.raises(ValueError, match="numerically singular"):
        D.balanced_update(t)


def test_singular_t_fewer_points_than_sections(small_sample):
    zs, patch, w = small_sample
    basis = _basis(2)  # N = 15
    t = D.t_operator(basis, np.eye(basis.size), zs[:10], patch[:10], w[:10])
    with pytest.raises(ValueError, match="numerically singular"):
        D.balanced_update(t)
    with pytest.raises(ValueError, match="n_points=10 < N_k=15"):
        D.balanced_metric(FERMAT, 2, NO_PARAMS, KEY, n_points=10)


def test_non_finite_t():
    t = np.eye(4, dtype=complex)
    t[1, 2] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        D.balanced_update(t)
    with pytest.raises(ValueError, match="numerically singular"):
        D.balanced_update(-np.eye(4))


# -- driver ---------------------------------------------------------------------------------


def test_driver_input_validation():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="degree"):
            D.balanced_metric(FERMAT, bad, NO_PARAMS, KEY)
    with pytest.raises(ValueError, match="n_points"):
        D.balanced_metric(FERMAT, 1, NO_PARAMS, KEY, n_points=0)
    with pytest.raises(ValueError, match="iterations"):
        D.balanced_metric(FERMAT, 1, NO_PARAMS, KEY, iterations=0)
    with pytest.raises(ValueError, match="basis has degree"):
        D.balanced_metric(FERMAT, 2, NO_PARAMS, KEY, basis=_basis(1))
    with pytest.raises(ValueError, match="dtype"):
        D.balanced_metric(FERMAT, 1, NO_PARAMS, KEY, dtype=np.int32)


def test_fewer_points_than_budget_warns():
    with pytest.warns(UserWarning, match="below the recommended"):
        res = D.balanced_metric(FERMAT, 1, NO_PARAMS, KEY, n_points=5000, iterations=2)
    assert res.h.shape == (5, 5) and res.n_points == 5000
    # the default budget does not warn: see test_sigma_scan_and_plot


def test_full_basis_k5_warns_and_is_singular():
    """The full basis at k >= 5 is dependent on the quintic: the warning of
    AlgebraicMetric fires through the driver, and T is singular (clear error)."""
    basis = cyflat.MonomialBasisFull(4, 5)
    with pytest.warns(UserWarning, match="linearly dependent"):
        with pytest.warns(UserWarning, match="below the recommended"):
            with pytest.raises(ValueError, match="numerically singular"):
                D.balanced_metric(FERMAT, 5, NO_PARAMS, KEY, basis=basis, n_points=1000, iterations=1)


@pytest.fixture(scope="module")
def balanced_k2():
    t0 = time.perf_counter()
    res = D.balanced_metric(FERMAT, 2, NO_PARAMS, KEY, iterations=10)
    return res, time.perf_counter() - t0


def test_balanced_fixed_point(balanced_k2):
    res, _ = balanced_k2
    assert res.basis.size == 15 and res.n_points == 10 * 15**2 + 50_000
    assert res.changes.shape == (10,) and res.conditions.shape == (10,)
    assert res.changes[-1] < res.changes[0] / 10
    assert np.all(np.diff(res.changes[1:]) < 0)  # fixed sample: geometric convergence
    h = np.asarray(res.h)
    assert np.isclose(np.trace(h).real, 15) and np.allclose(h, h.conj().T)
    # T(H) = (H^{-1})^T at the balanced point (same sample as the iteration: the first one)
    zs, patch, _, w, _ = D._sample_points(
        FERMAT, jax.random.fold_in(jax.random.split(KEY)[0], 0), NO_PARAMS, res.n_points, jnp.complex128
    )
    t = np.asarray(D.t_operator(res.basis, res.h, zs, patch, w))
    target = np.linalg.inv(h).T
    assert np.linalg.norm(t - target) / np.linalg.norm(target) < 1e-5
    assert abs(np.sum(t * h) - 15) < 1e-10


def _check_reference(k, res, seconds):
    t0 = time.perf_counter()
    est = D.sigma_chunked(res.metric, jax.random.PRNGKey(99), NO_PARAMS, res.h, 100_000)
    sigma, se = float(est.value), float(est.stderr)
    print(f"\nk={k}: sigma = {sigma:.4f} +- {se:.4f} (reference {REFERENCE[k]}), "
          f"balanced {seconds:.1f} s, sigma {time.perf_counter() - t0:.1f} s")
    assert abs(sigma - REFERENCE[k]) < 0.05 * REFERENCE[k]
    assert se < 0.005
    return sigma


def test_reference_sigma_k2(balanced_k2):
    res, seconds = balanced_k2
    _check_reference(2, res, seconds)


@pytest.mark.slow
def test_reference_sigma_k3():
    t0 = time.perf_counter()
    res = D.balanced_metric(FERMAT, 3, NO_PARAMS, KEY, iterations=10)
    _check_reference(3, res, time.perf_counter() - t0)


@pytest.mark.slow
def test_reference_sigma_k4():
    t0 = time.perf_counter()
    res = D.balanced_metric(FERMAT, 4, NO_PARAMS, KEY, iterations=10)
    _check_reference(4, res, time.perf_counter() - t0)


@pytest.mark.slow
def test_sigma_decreases_up_to_k6():
    rows = D.sigma_scan(FERMAT, range(1, 7), NO_PARAMS, KEY, iterations=10, sigma_points=100_000)
    sig = [r["sigma"] for r in rows]
    print("\nsigma_scan:", [(r["k"], r["basis_size"], round(r["sigma"], 4), round(r["seconds"], 1)) for r in rows])
    assert all(a > b for a, b in zip(sig, sig[1:])), sig
    assert abs(rows[0]["sigma_fs"] - 0.372) < 0.01


# -- sigma helper, scan and plot -------------------------------------------------------------


def test_sigma_chunked_equals_sigma_accuracy():
    """Same estimator as AlgebraicMetric.sigma_accuracy(fold_in(key, 0), ..., SAMPLE_CHUNK):
    same sample, eta from the library (jitted here: eager evaluation is slow to dispatch)."""
    basis = _basis(1)
    metric = cyflat.AlgebraicMetric(FERMAT, basis)
    h = jnp.asarray(_random_h(5, seed=2))
    ours = D.sigma_chunked(metric, KEY, NO_PARAMS, h, D.SAMPLE_CHUNK)
    s = FERMAT.sample(jax.random.fold_in(KEY, 0), NO_PARAMS, D.SAMPLE_CHUNK, dtype=jnp.complex128)
    eta = jax.jit(metric.eta)(h, s.zs, NO_PARAMS, s.patch, s.dependent)
    ref = cyflat.sigma_from_eta(eta, s.weights, s.n_failed)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(float(a), float(b), rtol=1e-10)


def test_sigma_scan_and_plot(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # default point budget: no warning
        rows = D.sigma_scan(FERMAT, [1], NO_PARAMS, KEY, iterations=2, sigma_points=D.SAMPLE_CHUNK)
    (row,) = rows
    assert row["k"] == 1 and row["basis_size"] == 5
    assert set(row) >= {"k", "basis_size", "sigma", "stderr", "sigma_fs", "sigma_fs_stderr", "seconds"}
    # k = 1: H = 1 is balanced on the Fermat quintic (see above): both are the FS value
    assert abs(row["sigma_fs"] - 0.372) < 4 * row["sigma_fs_stderr"] + 0.003
    assert abs(row["sigma"] - row["sigma_fs"]) < 0.01
    fake = rows + [dict(k=2, basis_size=15, sigma=0.27, stderr=0.002, sigma_fs=None)]
    path = D.plot_sigma_vs_k(fake, tmp_path / "sigma.png")
    data = (tmp_path / "sigma.png").read_bytes()
    assert path == tmp_path / "sigma.png" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="degrees"):
        D.sigma_scan(FERMAT, [0], NO_PARAMS, KEY)
