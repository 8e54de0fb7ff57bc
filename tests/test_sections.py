"""Monomial sections: sizes of the reduced basis, pivots, rank tests, derivatives.

Compiles dominate the run time here, so the tests share bases, shapes and one small
sample of the Fermat quintic."""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cyflat
from cyflat import projective as proj
from cyflat.sections import (
    MonomialBasis,
    MonomialBasisFull,
    MonomialBasisReduced,
    gram_rank,
    monomial_exponents,
)

QUINTIC = cyflat.Fermat(3)
# No pure fifth power of z0 or z1: the pivot must be another term of Q (z2^5).
NO_Z0Z1_POWERS = cyflat.Hypersurface("z0**4*z1 + z0*z1**4 + z2**5 + z3**5 + z4**5 + z0*z1*z2*z3*z4")
# No pure power at all (a smooth "loop" quintic): the pivot is the lex-leading term z0^4 z1.
LOOP = cyflat.Hypersurface("z0**4*z1 + z1**4*z2 + z2**4*z3 + z3**4*z4 + z4**4*z0")

REDUCED5 = MonomialBasisReduced(QUINTIC, 5, check=False)
LOOP5 = MonomialBasisReduced(LOOP, 5, check=False)  # 121 of 126 monomials, non-contiguous
REVERSED3 = MonomialBasis(4, 3, monomial_exponents(4, 3)[::-1])  # one row per run: gathered
B = 12


@pytest.fixture(scope="module")
def points():
    s = QUINTIC.sample(jax.random.PRNGKey(0), None, B, dtype=jnp.complex128)
    return s.zs, s.patch


def _direct_values(exponents, zh):
    """Reference: prod_i z_i^e_i with numpy."""
    zh = np.asarray(zh)
    return np.prod(zh[..., None, :] ** exponents[None], axis=-1)


@pytest.mark.parametrize("k", range(1, 7))
def test_reduced_size_quintic(k):
    basis = MonomialBasisReduced(QUINTIC, k, check=False)
    assert basis.size == math.comb(4 + k, k) - (math.comb(k - 1, 4) if k >= 5 else 0)
    assert MonomialBasisFull(4, k).size == math.comb(4 + k, k)
    assert basis.pivot == (5, 0, 0, 0, 0)
    # Dropped exactly the monomials divisible by the pivot.
    dropped = {tuple(e) for e in monomial_exponents(4, k)} - {tuple(e) for e in basis.exponents}
    assert all(e[0] >= 5 for e in dropped)


def test_full_basis_dependent_reduced_independent():
    k = 5
    full = MonomialBasisFull(4, k)
    with pytest.warns(UserWarning, match="linearly dependent"):
        cyflat.AlgebraicMetric(QUINTIC, full)
    reduced = MonomialBasisReduced(QUINTIC, k)  # runs the rank test itself
    assert gram_rank(QUINTIC, full, None) == reduced.size < full.size
    assert gram_rank(QUINTIC, reduced, None) == reduced.size
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cyflat.AlgebraicMetric(QUINTIC, reduced)
        cyflat.AlgebraicMetric(QUINTIC, MonomialBasisFull(4, 4))  # k < deg Q: no warning


@pytest.mark.parametrize("variety, pivot", [(NO_Z0Z1_POWERS, (0, 0, 5, 0, 0)), (LOOP, (4, 1, 0, 0, 0))])
def test_pivot_has_nonzero_coefficient(variety, pivot):
    coeffs = np.asarray(variety.coefficients(None))
    terms = {tuple(e): c for e, c in zip(variety.poly.exponents.tolist(), coeffs)}
    k = 5
    basis = MonomialBasisReduced(variety, k)  # the rank test passes
    assert basis.pivot == pivot and terms[pivot] != 0
    assert basis.size == math.comb(4 + k, k) - math.comb(k - 1, 4)
    assert gram_rank(variety, MonomialBasisFull(4, k), None) == basis.size


def test_pivot_skips_vanishing_coefficient():
    variety = cyflat.Hypersurface("a*z0**5 + z1**5 + z2**5 + z3**5 + z4**5", params=["a"])
    assert MonomialBasisReduced(variety, 5, params=jnp.array([1.0]), check=False).pivot == (5, 0, 0, 0, 0)
    assert MonomialBasisReduced(variety, 5, params=jnp.array([0.0]), check=False).pivot == (0, 5, 0, 0, 0)
    with pytest.raises(ValueError, match="params"):
        MonomialBasisReduced(variety, 5, params=jnp.ones((2, 1)), check=False)


def test_invalid_degree():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="degree"):
            MonomialBasisFull(4, bad)
        with pytest.raises(ValueError, match="degree"):
            MonomialBasisReduced(QUINTIC, bad)
    with pytest.raises(ValueError, match="dim_proj"):
        MonomialBasisFull(0, 2)


def test_exponents_lex_order():
    e = monomial_exponents(4, 3)
    assert e.shape == (35, 5) and np.all(e.sum(1) == 3)
    assert [tuple(r) for r in e] == sorted(map(tuple, e), reverse=True)


@pytest.mark.parametrize("basis", [REDUCED5, LOOP5, REVERSED3], ids=["reduced5", "loop5", "reversed3"])
def test_values_match_direct_products(basis, points):
    zs, patch = points
    zh = proj.affine_to_hom(zs, patch)
    np.testing.assert_allclose(basis(zs, patch), _direct_values(basis.exponents, zh), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("basis", [REDUCED5, REVERSED3], ids=["reduced5", "reversed3"])
def test_values_and_jacobian_match_autodiff(basis, points):
    zs, patch = points
    values, jac = basis.values_and_jacobian(zs, patch)
    assert values.shape == (B, basis.size) and jac.shape == (B, 4, basis.size)
    ref = jax.jit(jax.vmap(lambda z, p: jax.jacfwd(lambda w: basis(w, p), holomorphic=True)(z)))(zs, patch)
    np.testing.assert_allclose(jac, jnp.swapaxes(ref, -1, -2), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(values, basis(zs, patch), rtol=1e-14)


def test_jets_are_directional_derivatives(points):
    basis = REDUCED5
    zh = proj.affine_to_hom(*points)
    t = jax.random.normal(jax.random.PRNGKey(7), (B, 3, 5), jnp.complex128)
    X = basis.jets_hom(zh, t)
    assert X.shape == (B, 4, basis.size)
    jvp = jax.jit(jax.vmap(lambda v: jax.jvp(basis.values_hom, (zh,), (v,))[1], in_axes=1, out_axes=1))(t)
    np.testing.assert_allclose(X[:, 1:], jvp, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(X[:, 0], basis.values_hom(zh), rtol=1e-14)
    # the power-table program (used under nested autodiff) computes the same jets
    for b in (REDUCED5, REVERSED3):
        np.testing.assert_allclose(b.jets_hom(zh, t, method="powers"), b.jets_hom(zh, t), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError, match="method"):
        basis.jets_hom(zh, t, method="gather")


def test_float32_sections(points):
    basis = REDUCED5
    zs, patch = points
    v64, j64 = basis.values_and_jacobian(zs, patch)
    v32, j32 = basis.values_and_jacobian(zs.astype(jnp.complex64), patch)
    assert v32.dtype == jnp.complex64 and j32.dtype == jnp.complex64
    np.testing.assert_allclose(v32, v64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(j32, j64, rtol=1e-5, atol=1e-5)


def test_basis_identity_and_jit(points):
    a = MonomialBasisReduced(QUINTIC, 5, check=False)
    assert a == REDUCED5 and hash(a) == hash(REDUCED5) and a != MonomialBasisFull(4, 5)
    zs, patch = points
    out = jax.jit(lambda basis, z, p: basis(z, p))(a, zs, patch)
    np.testing.assert_allclose(out, REDUCED5(zs, patch), rtol=1e-14)
