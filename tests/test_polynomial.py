"""Polynomial parsing, evaluation, gradients and line restrictions (cyflat.polynomial).

Library calls are jitted and reference values computed with numpy (on CPU every
distinct eager JAX operation is a separate compilation).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sympy as sp

import cyflat
from cyflat import polynomial as polymod
from cyflat.polynomial import Polynomial


def _points(seed, count, n1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(count, n1)) + 1j * rng.normal(size=(count, n1))


def _numpy_eval(poly, z, coeffs):
    """sum_t c_t prod_i z_i^e_ti, straight from the exponent table."""
    mono = np.prod(z[..., None, :] ** poly.exponents, axis=-1)
    return np.sum(np.asarray(coeffs) * mono, axis=-1)


def _dense(n, degree, seed):
    rng = np.random.default_rng(seed)
    terms = []
    for m in itertools.product(range(degree + 1), repeat=n + 1):
        if sum(m) == degree:
            c = complex(round(rng.normal(), 3), round(rng.normal(), 3))
            terms.append(f"({c.real}+{c.imag}*I)*" + "*".join(f"z{i}**{k}" for i, k in enumerate(m) if k))
    return " + ".join(terms)


# -- parsing and validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, params, n, match",
    [
        ("z0**3 + z1**2 + z2**3", (), None, "not homogeneous"),
        ("z0**3 + z1**3 + z2**3 + a*z0*z1*z2", (), None, "unknown symbol"),
        ("z0**3 + z1**3 + z3**3", (), None, "skip"),
        ("z0**3 + + * z1", (), None, "cannot parse"),
        ("z0**3 + (z1", (), None, "cannot parse"),
        ("z0 - z0", (), None, "identically zero"),
        ("z0**3 + z1**3 + z2**3", ("z1",), None, "clashes"),
        ("z0**3 + z1**3 + z5**3", (), 2, "P\\^2"),
        ("psi + psi", ("psi",), None, "no coordinates"),
        ("z0**2*psi + z1**2", ("psi", "psi"), None, "duplicate"),
        ("z0**4/z1 + z1**3 + z2**3", (), None, "not a polynomial"),
        ("sin(z0) + z1**3 + z2**3", (), None, "not a polynomial"),
        ("zoo*z0**3 + z1**3 + z2**3", (), None, "non-finite coefficient"),
        ("nan*z0**3 + z1**3 + z2**3", (), None, "non-finite coefficient"),
        ("z00**3 + z1**3 + z2**3", (), None, "unknown symbol"),
    ],
)
def test_bad_polynomials_raise_value_error(expr, params, n, match):
    with pytest.raises(ValueError, match=match):
        Polynomial(expr, params, n)


def test_not_an_expression_raises():
    with pytest.raises(ValueError, match="sympy expression or a string"):
        Polynomial(12345)


def test_explicit_n_allows_missing_coordinate():
    p = Polynomial("z0**3 + z2**3", n=3)
    assert p.n == 3 and p.degree == 3 and p.exponents.shape == (2, 4)


def test_parse_structure_repr_latex():
    p = Polynomial("z0**5 + z1**5 + z2**5 + z3**5 + z4**5 - 5*psi*z0*z1*z2*z3*z4", params=["psi"])
    assert p.n == 4 and p.degree == 5 and p.num_terms == 6 and p.param_names == ("psi",) and p.num_params == 1
    assert p.exponents.dtype == np.int32 and set(p.exponents.sum(axis=1)) == {5}
    r = repr(p)
    assert r.startswith("Polynomial(") and "psi" in r and "n=4" in r and "z0**5" in r
    tex = p.latex()
    assert "z_{0}^{5}" in tex and "\\psi" in tex
    assert p._repr_latex_() == f"${tex}$"
    # sympy input, hashing and equality
    z = sp.symbols("z0:5")
    q = Polynomial(sum(zi**5 for zi in z) - 5 * sp.Symbol("psi") * sp.prod(z), params=["psi"])
    assert q == p and hash(q) == hash(p)
    assert Polynomial("z0**3+z1**3+z2**3") != Polynomial("z0**3+z1**3+2*z2**3")


def test_coefficients_and_check_params():
    p = Polynomial("a*z0**2 + (b**2 + 1)*z1**2 + z0*z1", params=["a", "b"])
    c = np.asarray(p.coefficients(jnp.asarray([2.0 + 1j, 3.0])))
    expected = {(2, 0): 2.0 + 1j, (0, 2): 10.0, (1, 1): 1.0}
    assert c.dtype == np.complex128
    for row, ci in zip(p.exponents, c):
        assert ci == expected[tuple(row)]
    # batched moduli
    cb = p.coefficients(jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1j, 2.0]]))
    assert cb.shape == (3, 3)
    with pytest.raises(ValueError, match="expected 2 moduli"):
        p.coefficients(jnp.asarray([1.0]))
    with pytest.raises(ValueError, match="needs 2 moduli"):
        p.check_params(None)
    assert p.check_params(jnp.asarray([1.0, 2.0], jnp.float32), jnp.complex64).dtype == jnp.complex64
    assert p.coefficients(jnp.asarray([1.0, 2.0]), jnp.complex64).dtype == jnp.complex64
    q = Polynomial("z0**2 + z1**2")
    assert q.coefficients(None).shape == (2,)
    # a scalar is one modulus
    assert Polynomial("a*z0**2 + z1**2", ["a"]).check_params(0.5).shape == (1,)


def test_pytree_without_leaves_passes_through_jit():
    p = Polynomial("z0**3 + z1**3 + z2**3")
    assert jax.tree_util.tree_leaves(p) == []
    f = jax.jit(lambda poly, z: poly.evaluate(z, poly.coefficients(None)))
    np.testing.assert_allclose(f(p, jnp.asarray([1.0, 2.0, 0.5j])), 1 + 8 - 0.125j)


# -- numerics: all three evaluation strategies ----------------------------------------------

_PLANS = {
    "fused": {},
    "matrix": {"_FUSED_GRAD_BUDGET": 0, "_FUSED_VALUE_BUDGET": 0},
    "table": {"_FUSED_GRAD_BUDGET": 0, "_FUSED_VALUE_BUDGET": 0, "_STRAIGHT_LINE_BUDGET": -1},
}

_POLYS = {
    "fermat quintic": (lambda: cyflat.Fermat(3).poly, None),
    "two-parameter quintic": (lambda: cyflat.TwoParameterQuintic().poly, np.asarray([1 + 1j, 0.3])),
    "dense cubic P^3": (lambda: Polynomial(_dense(3, 3, 0)), None),
    "degree 1": (lambda: Polynomial("z0 + 2*z1 - I*z2"), None),
}


@pytest.mark.parametrize("plan", list(_PLANS))
@pytest.mark.parametrize("name", list(_POLYS))
def test_value_and_gradient_match_numpy_and_autodiff(monkeypatch, plan, name):
    for attr, value in _PLANS[plan].items():
        monkeypatch.setattr(polymod, attr, value)
    make, params = _POLYS[name]
    poly = make()
    if plan == "fused" and name != "dense cubic P^3":
        assert poly._grad_fused or name == "two-parameter quintic"
    if plan == "table":
        assert not any(poly._straight.values())
    z = _points(1, 64, poly.n + 1)
    coeffs = poly.coefficients(params)

    @jax.jit
    def run(z):
        val, grad = poly.value_and_gradient(z, coeffs)
        auto = jax.vmap(jax.grad(lambda x: poly.evaluate(x, coeffs), holomorphic=True))(z)
        return poly.evaluate(z, coeffs), val, grad, poly.gradient(z, coeffs), auto, poly.monomials(z)

    ev, val, grad, grad2, auto, mono = (np.asarray(x) for x in run(z))
    scale = np.linalg.norm(z, axis=-1) ** poly.degree * np.sum(np.abs(np.asarray(coeffs)))
    ref = _numpy_eval(poly, z, coeffs)
    assert np.max(np.abs(ev - ref) / scale) < 1e-14
    assert np.max(np.abs(val - ref) / scale) < 1e-14  # Euler's identity
    gscale = (scale / np.linalg.norm(z, axis=-1) * poly.degree)[:, None]
    assert np.max(np.abs(grad - auto) / gscale) < 1e-14
    np.testing.assert_array_equal(grad, grad2)
    np.testing.assert_allclose(mono, np.prod(z[:, None, :] ** poly.exponents, axis=-1), rtol=1e-13)


def test_complex64_evaluation():
    poly = cyflat.TwoParameterQuintic().poly
    coeffs = poly.coefficients(np.asarray([1 + 1j, 0.3]), jnp.complex64)
    assert coeffs.dtype == jnp.complex64
    z = _points(2, 32, 5)
    val, grad = jax.jit(poly.value_and_gradient)(z.astype(np.complex64), coeffs)
    assert val.dtype == jnp.complex64 and grad.dtype == jnp.complex64
    ref = _numpy_eval(poly, z, np.asarray(coeffs, np.complex128))
    scale = np.linalg.norm(z, axis=-1) ** 5 * np.sum(np.abs(np.asarray(coeffs)))
    assert np.max(np.abs(np.asarray(val) - ref) / scale) < 1e-6


def test_batched_coefficients_broadcast_against_points():
    poly = cyflat.Dwork(3).poly
    psi = np.asarray([[0.0], [0.5 + 0.1j], [2.0]])
    coeffs = poly.coefficients(psi)  # (3, T)
    z = _points(3, 3 * 7, 5).reshape(3, 7, 5)
    val, grad = jax.jit(poly.value_and_gradient)(z, coeffs[:, None, :])
    assert val.shape == (3, 7) and grad.shape == (3, 7, 5)
    for k in range(3):
        v1, g1 = jax.jit(poly.value_and_gradient)(z[k], coeffs[k])
        np.testing.assert_allclose(val[k], v1, rtol=1e-13)
        np.testing.assert_allclose(grad[k], g1, rtol=1e-13)
    ev = jax.jit(poly.evaluate)(z, coeffs[:, None, :])
    np.testing.assert_allclose(ev, val, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["fermat quintic", "two-parameter quintic", "dense cubic P^3"])
def test_line_coefficients_match_direct_evaluation(name):
    make, params = _POLYS[name]
    poly = make()
    coeffs = poly.coefficients(params)
    p, q = _points(4, 16, poly.n + 1), _points(5, 16, poly.n + 1)
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    a = np.asarray(jax.jit(poly.line_coefficients)(p, q, coeffs))
    assert a.shape == (16, poly.degree + 1)
    t = np.random.default_rng(6).normal(size=(16, 3)) * 2 + 1j * np.random.default_rng(7).normal(size=(16, 3))
    direct = _numpy_eval(poly, p[:, None, :] + t[..., None] * q[:, None, :], coeffs)
    from_coeffs = np.stack([np.polynomial.polynomial.polyval(t[i], a[i]) for i in range(16)])
    scale = np.sum(np.abs(np.asarray(coeffs))) * (1 + np.abs(t)) ** poly.degree
    assert np.max(np.abs(direct - from_coeffs) / scale) < 1e-13
    # leading and constant coefficients are Q(q) and Q(p)
    np.testing.assert_allclose(a[:, 0], _numpy_eval(poly, p, coeffs), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(a[:, -1], _numpy_eval(poly, q, coeffs), rtol=1e-12, atol=1e-13)


def test_single_parameter_name_as_string_and_finite_moduli():
    poly = Polynomial("z0**3 + z1**3 + z2**3 - 3*psi*z0*z1*z2", params="psi")
    assert poly.param_names == ("psi",)
    with pytest.raises(ValueError, match="finite"):
        poly.check_params(jnp.array([jnp.nan]))
    with pytest.raises(ValueError, match="finite"):
        poly.coefficients(jnp.array([jnp.inf + 0j]))
