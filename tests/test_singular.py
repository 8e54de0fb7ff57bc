"""Singular members: the exact Dwork discriminant and the general Newton search agree."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cyflat
from cyflat.singular import check_moduli, min_relative_gradient, singularity_report

# The Dwork quintic written as a plain polynomial: no known discriminant, so the Newton
# search is used.
GENERAL_DWORK = cyflat.Hypersurface("z0**5+z1**5+z2**5+z3**5+z4**5-5*psi*z0*z1*z2*z3*z4", params=["psi"])
W = np.exp(2j * np.pi / 5)


def test_dwork_known_discriminant():
    rep = singularity_report(cyflat.Dwork(3), jnp.array([[1.0], [W**3], [0.5], [1.0 + 1e-3]]))
    np.testing.assert_array_equal(rep.singular, [True, True, False, False])
    np.testing.assert_allclose(rep.distance, [0, 0, 0.5, 1e-3], atol=1e-12)


def test_newton_search_finds_the_nodes():
    # At the five singular members a critical point exists: Newton converges to it and the
    # relative gradient drops to round-off; smooth members stay far above the tolerance.
    r = min_relative_gradient(GENERAL_DWORK, jnp.array([[1.0], [W], [W**2], [0.5], [1.5 + 0.7j], [10.0]]))
    assert np.all(r[:3] < 1e-12), r
    assert np.all(r[3:] > 1e-3), r
    # Nearly singular: the distance to the node shows up linearly.
    near = min_relative_gradient(GENERAL_DWORK, jnp.array([1.0 + 1e-4]))
    assert 1e-7 < near < 1e-3


def test_check_moduli_warns_or_raises():
    with pytest.warns(UserWarning, match="singular"):
        check_moduli(cyflat.Dwork(3), jnp.array([1.0]), what="sigma")
    with pytest.raises(ValueError, match="singular"):
        check_moduli(cyflat.Dwork(3), jnp.array([[0.3], [W]]), on_singular="raise")
    check_moduli(cyflat.Dwork(3), jnp.array([0.3]), on_singular="raise")  # smooth: silent
    with pytest.raises(ValueError, match="on_singular"):
        check_moduli(cyflat.Dwork(3), jnp.array([0.3]), on_singular="maybe")


# -- broken samples near the node of Dwork psi = 1 ---------------------------------------------


def _constructed_lines(dtype):
    """Lines p + t q (rows): through the node (1,...,1) of Dwork psi = 1, at distance 1e-7
    and 1e-4 from it, and nearly tangent to X at a smooth point (distance 0 and 1e-9)."""
    X = cyflat.Dwork(3)
    psi = jnp.array([1.0 + 0j], dtype)
    coeffs = X.poly.coefficients(psi, dtype)
    rng = np.random.default_rng(0)
    node = np.ones(5) / np.sqrt(5)
    q = rng.normal(size=5) + 1j * rng.normal(size=5)
    q -= node * (node @ q)
    ps, qs = [node, node + 1e-7 * q, node + 1e-4 * q], [q, q, q]
    s = X.sample(jax.random.PRNGKey(0), psi, 10, dtype=jnp.complex128)
    z = np.asarray(cyflat.projective.affine_to_hom(s.zs[0], s.patch[0]))
    grad = np.asarray(X.poly.gradient(jnp.asarray(z), X.poly.coefficients(psi, jnp.complex128)))
    v = rng.normal(size=5) + 1j * rng.normal(size=5)
    v -= np.conj(grad) * (grad @ v) / np.vdot(grad, grad)  # grad . v = 0: tangent at z
    normal = np.conj(grad) / np.linalg.norm(grad)
    ps += [z / np.linalg.norm(z), z / np.linalg.norm(z) + 1e-9 * normal]
    qs += [v, v]
    p, q = np.stack(ps), np.stack(qs)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return X, coeffs, jnp.asarray(np.stack([p.T, q.T]), dtype)  # (2, n+1, lines)


@pytest.mark.parametrize("dtype", [jnp.complex128, jnp.complex64])
def test_lines_through_the_node_and_nearly_tangent(dtype):
    """The sampler's per-line kernel (``_sample_chunk``, what ``sample`` maps over chunks of
    random lines) on constructed hard lines: every point it accepts has a finite positive
    weight and lies on X within the sampler's tolerance, recomputed here independently;
    in f64 the points AT the node (gradient ~ 0: weight ~ 1e17, residual above tolerance)
    are rejected, not passed on."""
    from cyflat.variety import _residual_tol, _sample_chunk, newton_distance

    X, coeffs, pq = _constructed_lines(dtype)
    line_coeffs = jnp.broadcast_to(coeffs, (pq.shape[-1], coeffs.shape[-1]))  # every line: the same member
    zs, patch, _, w, ok = jax.jit(lambda pq: _sample_chunk(X.poly, pq, line_coeffs, dtype))(pq)
    zs = jnp.moveaxis(zs, 0, -1)  # (lines, D, n)
    zh = cyflat.projective.affine_to_hom(zs.astype(jnp.complex128), patch)
    c64 = X.poly.coefficients(jnp.array([1.0 + 0j]), jnp.complex128)
    val, grad = X.poly.value_and_gradient(zh, c64)
    dist = np.asarray(newton_distance(val, grad, zh))
    ok, w = np.asarray(ok), np.asarray(w)
    assert np.all(np.isfinite(w[ok])) and np.all(w[ok] > 0)
    # f32 points are rounded to f32 before the f64 check: allow that rounding (10 eps).
    tol = _residual_tol(dtype) + (10 * float(jnp.finfo(dtype).eps) if dtype == jnp.complex64 else 0)
    assert np.all(dist[ok] <= tol), dist[ok].max()
    # Nearly tangent lines: both close roots and the other three are accepted.
    assert ok[3:].all()
    if dtype == jnp.complex128:
        # Through the node and 1e-7 from it: the two points at the node are rejected, the
        # other three of each line are accepted with ordinary weights.
        for line in (0, 1):
            at_node = w[line] > 1e10
            assert at_node.sum() == 2 and not ok[line][at_node].any()
            assert ok[line][~at_node].all() and (w[line][~at_node] < 1e3).all()


@pytest.mark.parametrize("dtype", [jnp.complex128, jnp.complex64])
def test_sampling_the_singular_member(dtype):
    """At psi = 1 itself: exactly ``count`` points, finite positive weights, the rejected
    ones counted, and the volume estimate reports its effective sample size."""
    X = cyflat.Dwork(3)
    psi = jnp.array([1.0 + 0j])
    count = 10_000
    s = X.sample(jax.random.PRNGKey(1), psi, count, dtype=dtype)
    assert s.zs.shape == (count, 4) and s.n_failed.shape == ()
    assert bool(jnp.all(jnp.isfinite(s.weights))) and bool(jnp.all(s.weights > 0))
    with pytest.warns(UserWarning, match="singular"):
        est = X.compute_vol(jax.random.PRNGKey(2), psi, count)
    assert np.isfinite(float(est.value)) and np.isfinite(float(est.stderr))
    assert 0 < float(est.ess) <= count


def test_entry_points_warn_or_refuse_at_singular_moduli():
    from cyflat.donaldson import balanced_metric
    from cyflat.metric import AlgebraicMetric
    from cyflat.sections import MonomialBasisFull

    X = cyflat.Dwork(3)
    node, smooth = jnp.array([W**2]), jnp.array([0.5 + 0.1j])
    metric = AlgebraicMetric(X, MonomialBasisFull(4, 1))
    h = jnp.eye(5, dtype=jnp.complex128)
    key = jax.random.PRNGKey(0)
    with pytest.warns(UserWarning, match="sigma accuracy is unreliable"):
        metric.sigma_accuracy(key, node, h, 1000)
    for call in (
        lambda: metric.sigma_accuracy(key, node, h, 1000, on_singular="raise"),
        lambda: X.compute_vol(key, node, 1000, on_singular="raise"),
        lambda: balanced_metric(X, 2, node, key, on_singular="raise"),
    ):
        with pytest.raises(ValueError, match="singular or nearly so"):
            call()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metric.sigma_accuracy(key, smooth, h, 1000)
        X.compute_vol(key, smooth, 1000)
        X.compute_vol(key, node, 1000, on_singular="ignore")
        # traced moduli (inside a caller's jit) are not inspected
        jax.jit(lambda p: X.compute_vol(key, p, 1000).value)(node)
    with pytest.warns(UserWarning, match="singular"):  # concrete moduli closed over by a jit: checked
        jax.jit(lambda: X.compute_vol(key, node, 1000).value)()


def test_variety_without_moduli_checked_on_request():
    """``singularity_report(X, None)``: a surface with a singular point (z0 = z2 = z3 = 0
    on z0^2 z1^2 + z2^4 + z3^4) is found by the Newton search; the Fermat quartic is not."""
    bad = cyflat.Hypersurface("z0**2*z1**2 + z2**4 + z3**4")
    assert bool(singularity_report(bad, None).singular)
    assert not bool(singularity_report(cyflat.Fermat(2), None).singular)
