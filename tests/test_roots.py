"""Tests for cyflat.roots (batched Aberth-Ehrlich polynomial roots).

Each distinct (function, shape, dtype) costs an XLA compilation of a few seconds,
so the cases are gathered into a few batches computed once per module.
"""

import importlib.util
import itertools
import pathlib

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

try:
    from cyflat.roots import polyroots, projective_roots
except Exception:  # package not installed, or its __init__ imports unfinished modules
    _path = pathlib.Path(__file__).resolve().parents[1] / "src" / "cyflat" / "roots.py"
    _spec = importlib.util.spec_from_file_location("_cyflat_roots", _path)
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    polyroots, projective_roots = _mod.polyroots, _mod.projective_roots

EPS64 = np.finfo(np.float64).eps


@pytest.fixture(scope="module", autouse=True)
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def random_coeffs(n, degree, seed, dtype=np.complex128):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n, degree + 1)) + 1j * rng.standard_normal((n, degree + 1))
    return c.astype(dtype)


def numpy_roots(coeffs):
    """Reference roots, row by row (numpy.roots wants descending powers)."""
    return np.stack([np.roots(c[::-1]) for c in np.asarray(coeffs, np.complex128)])


def match_error(ours, ref):
    """Per row: min over bijections ours <-> ref of max_k |ours - ref_k| / max(1, |ref_k|)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    perms = np.array(list(itertools.permutations(range(ref.shape[-1]))))
    diff = np.abs(ours[:, perms] - ref[:, None, :]) / np.maximum(1, np.abs(ref))[:, None, :]
    return diff.max(-1).min(-1)


def nearest_rel_error(ours, exact):
    """For each exact root, |nearest of ours - exact| / |exact|."""
    ours, exact = np.asarray(ours), np.asarray(exact)
    return np.abs(ours[None, :] - exact[:, None]).min(1) / np.abs(exact)


def expand(roots):
    """Ascending coefficients of prod_k (t - roots_k)."""
    return np.poly(np.asarray(roots, np.complex128))[::-1].copy()


# --- 1. random polynomials against numpy.roots ----------------------------------------


@pytest.fixture(scope="module")
def quintics(x64):
    c = random_coeffs(10_000, 5, seed=5)
    roots, conv = polyroots(jnp.asarray(c))
    return c, np.asarray(roots), np.asarray(conv)


def test_random_quintics_against_numpy(quintics):
    c, roots, conv = quintics
    assert roots.shape == (10_000, 5) and roots.dtype == np.complex128
    assert conv.shape == (10_000,) and conv.all()
    err = match_error(roots, numpy_roots(c))
    assert err.max() <= 1e-10, err.max()


@pytest.mark.parametrize("degree", [3, 4, 6])
def test_random_other_degrees_against_numpy(degree):
    c = random_coeffs(500, degree, seed=degree)
    roots, conv = polyroots(jnp.asarray(c))
    assert roots.shape == (500, degree) and bool(conv.all())
    assert match_error(roots, numpy_roots(c)).max() <= 1e-10


# --- 2. hard cases (one batch of quintics, padded with random ones) -------------------

NEAR_DOUBLE = np.array([1, 1 + 1e-6, 2, -3, 0.5j])
DOUBLE = np.array([1, 1, 2, -3, 0.5j])  # expanded coefficients are exact in binary
SPREAD = np.array([1e-6, 1e-3j, 1.0, -1e3, 1e6 * np.exp(0.3j)])


@pytest.fixture(scope="module")
def mixed(x64):
    """Rows 0..8 hard cases, then random quintics, some with exact zero end coefficients.

    Rows 9..99: c5 = 0; 100..199: c0 = 0; 200..299: |c5| ~ 1e-9; 300: an inf coefficient.
    """
    c = random_coeffs(2009, 5, seed=9)
    c[0, 5] = 0  # zero leading coefficient: one root at infinity
    c[1, 5] = 1e-12  # tiny leading coefficient: one root ~1e12
    c[2] = expand(NEAR_DOUBLE)
    c[3] = expand(DOUBLE)
    c[4] = expand(SPREAD)
    c[5] = [0, 0, -1, 1, 0, 0]  # t^2 (t - 1): roots 0, 0, 1, inf, inf
    c[6] = 0  # all zero
    c[7] = [2, 0, 0, 0, 0, 0]  # constant: five roots at infinity
    c[8, 4:] = 0  # two roots at infinity
    c[9:100, 5] = 0
    c[100:200, 0] = 0
    c[200:300, 5] *= 1e-9
    c[300, 2] = np.inf  # not finite
    roots, conv = polyroots(jnp.asarray(c))
    s, t, pconv = projective_roots(jnp.asarray(c))
    return c, np.asarray(roots), np.asarray(conv), np.asarray(s), np.asarray(t), np.asarray(pconv)


def test_zero_leading_coefficient(mixed):
    c, roots, conv, s, t, pconv = mixed
    assert conv[0] and pconv[0]
    inf = ~np.isfinite(roots[0])
    assert inf.sum() == 1 and roots[0][inf][0] == complex(np.inf, 0)
    assert match_error(roots[0][~inf][None], numpy_roots(c[None, 0, :5])).max() <= 1e-12
    # the root at infinity is [s : t] = [0 : 1]; the finite ones have |s| well above 0
    k = np.argmin(np.abs(s[0]))
    assert np.abs(s[0, k]) <= 1e-14 and np.abs(np.abs(t[0, k]) - 1) <= 1e-14
    assert np.all(np.abs(np.delete(s[0], k)) > 0.1)


def test_tiny_leading_coefficient(mixed):
    c, roots, conv = mixed[:3]
    assert conv[1]
    # high-precision reference; the huge root ~ -c4/c5 is well conditioned relatively
    with mpmath.workdps(50):
        coeffs = [mpmath.mpc(x.real, x.imag) for x in c[1, ::-1]]
        ref = mpmath.polyroots(coeffs, maxsteps=200, extraprec=200)
    ref = np.array([complex(r) for r in ref])
    assert np.abs(ref).max() > 1e11
    assert nearest_rel_error(roots[1], ref).max() <= 1e-13
    assert match_error(roots[1][None], numpy_roots(c[None, 1])).max() <= 1e-10


def test_nearly_double_root(mixed):
    c, roots, conv = mixed[:3]
    assert conv[2]
    err = nearest_rel_error(roots[2], NEAR_DOUBLE)
    # Conditioning limit: rounding the expanded coefficients to float64 alone moves a
    # simple root r by up to eps * sum_j |a_j||r|^j / |p'(r)| (first order).  For the
    # pair 1e-6 apart |p'(r)| ~ 4.5e-6, so this bound is ~7e-10: no float64 method can
    # promise much better than 1e-9 there.  Ask for 1e-8, and for 10x the bound per root.
    a = c[2][::-1]
    scale = np.polyval(np.abs(a), np.abs(NEAR_DOUBLE))
    bound = EPS64 * scale / np.abs(np.polyval(np.polyder(a), NEAR_DOUBLE))
    assert err.max() <= 1e-8
    assert np.all(err <= 10 * bound / np.abs(NEAR_DOUBLE) + 4 * EPS64)


def test_exact_double_root(mixed):
    roots = mixed[1]
    # convergence flag not promised; a double root is only determined to ~sqrt(eps)
    assert np.all(np.isfinite(roots[3]))
    assert nearest_rel_error(roots[3], DOUBLE).max() <= 1e-7


def test_roots_spanning_twelve_decades(mixed):
    roots, conv = mixed[1:3]
    assert conv[4]
    # roots far apart in modulus are well conditioned relative to their own size
    assert nearest_rel_error(roots[4], SPREAD).max() <= 1e-12


def test_exact_zero_and_infinite_roots(mixed):
    c, roots, conv, s, t, pconv = mixed
    assert conv[5] and conv[7] and conv[8] and pconv[5]
    np.testing.assert_array_equal(np.sort_complex(roots[5]), [0, 0, 1, np.inf, np.inf])
    np.testing.assert_array_equal(roots[7], np.full(5, complex(np.inf, 0)))
    assert np.sum(~np.isfinite(roots[8])) == 2
    np.testing.assert_array_equal(np.sort(np.abs(s[5])), [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(np.sort(np.abs(t[5])), [0, 0, 1, 1, 1])


def test_degenerate_coefficients(mixed):
    c, roots, conv, s, t, pconv = mixed
    for row in (6, 300):  # all zero; one inf
        assert not conv[row] and not pconv[row]
        assert np.all(np.isfinite(roots[row]) & np.isfinite(s[row]) & np.isfinite(t[row]))


def test_nonconvergence_is_reported(quintics):
    # max_iter is traced: this reuses the compiled program of the quintics fixture
    _, conv = polyroots(jnp.asarray(quintics[0]), max_iter=2)
    assert not bool(conv.any())


# --- 3. backward error ----------------------------------------------------------------


def test_residual_random_batch(quintics):
    c, roots, _ = quintics
    powers = roots[..., None] ** np.arange(6)  # (n, D, D+1)
    value = np.abs((powers * c[:, None, :]).sum(-1))
    scale = (np.abs(powers) * np.abs(c[:, None, :])).sum(-1)
    assert (value / scale).max() <= 1e-13


# --- 4. float32, jit, vmap ------------------------------------------------------------


def test_float32_jit_vmap_default_config():
    c = random_coeffs(1000, 5, seed=32, dtype=np.complex64)
    with jax.enable_x64(False):  # the library must not rely on x64
        roots, conv = jax.jit(jax.vmap(polyroots))(jnp.asarray(c.reshape(4, 250, 6)))
        assert roots.shape == (4, 250, 5) and roots.dtype == jnp.complex64 and bool(conv.all())
    assert match_error(np.asarray(roots).reshape(1000, 5), numpy_roots(c)).max() <= 1e-4
    # under x64 too the dtype follows the input (checked by tracing only)
    spec = jax.ShapeDtypeStruct(c.shape, c.dtype)
    out = jax.eval_shape(polyroots, spec) + jax.eval_shape(projective_roots, spec)
    c64, b = jnp.complex64, jnp.bool_
    assert [o.dtype for o in out] == [c64, b, c64, c64, b]


# --- 5. no host callbacks -------------------------------------------------------------


def test_no_callbacks_in_jaxpr():
    c = jnp.asarray(random_coeffs(3, 5, seed=1))
    for f in (polyroots, jax.jit(polyroots), projective_roots, jax.vmap(polyroots)):
        text = str(jax.make_jaxpr(f)(c))
        assert "callback" not in text and "eig" not in text and "while" in text


# --- 6. projective roots --------------------------------------------------------------


def test_projective_roots(mixed):
    c, roots, conv, s, t, pconv = mixed
    ok = ~np.isin(np.arange(len(c)), [6, 300])  # not the degenerate rows
    c, roots, s, t = c[ok], roots[ok], s[ok], t[ok]
    assert pconv[ok].all()
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(t))
    np.testing.assert_allclose(np.maximum(np.abs(s), np.abs(t)), 1, rtol=0, atol=2 * EPS64)
    j = np.arange(6)
    terms = c[:, None, :] * s[..., None] ** (5 - j) * t[..., None] ** j  # F(s, t) term by term
    # relative residual; exact roots (s = 0 or t = 0 with a zero end coefficient) give 0 <= 0
    assert np.all(np.abs(terms.sum(-1)) <= 1e-13 * np.abs(terms).sum(-1))
    # zero ends give exact [0 : 1] and [1 : 0] (row indices shifted by one: row 6 dropped)
    assert np.all(np.abs(s[8:99]).min(-1) == 0) and np.all(np.abs(t[99:199]).min(-1) == 0)
    # consistent with polyroots: root = t / s
    finite = np.abs(s) > 0
    np.testing.assert_allclose(t[finite] / s[finite], roots[finite], rtol=1e-14)
    assert np.all(roots[~finite] == complex(np.inf, 0))
