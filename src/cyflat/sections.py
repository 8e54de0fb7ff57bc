"""Sections of O(k): degree-k monomials in the homogeneous coordinates.

A section basis holds a static exponent table ``exponents`` (N, n+1) and evaluates, in
an affine patch (``z_patch = 1``), the values ``s_alpha`` (..., N) and their affine
derivatives ``ds_alpha / dz_j`` (..., n, N).  Powers are precomputed once per point
(``z_i^p``, p <= k) and monomials gathered from them: no per-point Python.

* :class:`MonomialBasisFull` - all ``C(n+k, k)`` monomials.  For ``k >= deg Q`` they are
  linearly dependent on X (a warning says so).
* :class:`MonomialBasisReduced` - drops the monomials divisible by a leading monomial
  of Q, leaving ``C(n+k,k) - C(k-deg Q+n, n)`` sections that are independent on X
  (for a Calabi-Yau, deg Q = n+1: ``C(n+k,k) - C(k-1,n)``).
"""

from __future__ import annotations

import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import projective as proj

__all__ = ["MonomialBasis", "MonomialBasisFull", "MonomialBasisReduced", "monomial_exponents"]


def monomial_exponents(n: int, degree: int) -> np.ndarray:
    """All exponent vectors of degree ``degree`` in ``n+1`` variables, (C(n+k,k), n+1), lex order."""
    rows = [
        c for c in itertools.product(range(degree, -1, -1), repeat=n + 1) if sum(c) == degree
    ]
    return np.asarray(rows, dtype=np.int32).reshape(-1, n + 1)


class MonomialBasis:
    """A basis of monomial sections of O(degree) on P^n (static exponent table).

    Attributes:
        n: ambient dimension; degree: k; exponents: np.ndarray int32 (N, n+1).
    """

    def __init__(self, n: int, degree: int, exponents: np.ndarray):
        if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
            raise ValueError(f"degree k of the sections must be an integer >= 1, got {degree!r}")
        self.n = int(n)
        self.degree = int(degree)
        self.exponents = np.asarray(exponents, dtype=np.int32)
        self._key = (type(self).__name__, self.n, self.degree, self.exponents.tobytes())

    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, MonomialBasis) and self._key == other._key

    def __repr__(self):
        return f"{type(self).__name__}(n={self.n}, degree={self.degree}, size={self.size})"

    @property
    def size(self) -> int:
        """N, the number of sections."""
        return self.exponents.shape[0]

    def _powers(self, zh):
        pows = [jnp.ones_like(zh)]
        for _ in range(self.degree):
            pows.append(pows[-1] * zh)
        return jnp.stack(pows, axis=-1)  # (..., n+1, k+1)

    def values_hom(self, zh):
        """Monomials at homogeneous points zh (..., n+1) -> (..., N)."""
        pw = self._powers(zh)
        cols = np.broadcast_to(np.arange(self.n + 1), self.exponents.shape)
        return jnp.prod(pw[..., cols, self.exponents], axis=-1)

    def __call__(self, zs, patch):
        """Section values at affine points zs (..., n) in ``patch`` -> (..., N)."""
        return self.values_hom(proj.affine_to_hom(zs, patch))

    def values_and_jacobian(self, zs, patch):
        """Values (..., N) and affine derivatives ``ds_alpha/dz_j`` (..., n, N)."""
        zh = proj.affine_to_hom(zs, patch)
        pw = self._powers(zh)
        e = self.exponents
        cols = np.broadcast_to(np.arange(self.n + 1), e.shape)
        values = jnp.prod(pw[..., cols, e], axis=-1)
        eye = np.eye(self.n + 1, dtype=np.int32)
        dexp = np.maximum(e[None] - eye[:, None, :], 0)  # (n+1, N, n+1)
        dcols = np.broadcast_to(np.arange(self.n + 1), dexp.shape)
        dhom = e.T * jnp.prod(pw[..., dcols, dexp], axis=-1)  # (..., n+1, N)
        patch = jnp.broadcast_to(jnp.asarray(patch, jnp.int32), zs.shape[:-1])
        rows = proj.index_affine_to_hom(jnp.arange(self.n), patch[..., None])  # (..., n)
        daff = jnp.take_along_axis(dhom, rows[..., None], axis=-2)
        return values, daff


class MonomialBasisFull(MonomialBasis):
    """All ``C(n+k, k)`` degree-k monomials on P^n."""

    def __init__(self, dim_proj: int, degree: int):
        if isinstance(dim_proj, bool) or not isinstance(dim_proj, (int, np.integer)) or dim_proj < 1:
            raise ValueError(f"dim_proj must be an integer >= 1, got {dim_proj!r}")
        if isinstance(degree, bool) or not isinstance(degree, (int, np.integer)) or degree < 1:
            raise ValueError(f"degree k of the sections must be an integer >= 1, got {degree!r}")
        super().__init__(dim_proj, degree, monomial_exponents(dim_proj, degree))


def _leading_monomial(variety, params):
    """A monomial of Q (non-zero coefficient at ``params``) that is the leading term of Q
    in a lexicographic order: a pure power z_i^D if Q has one, else the lex-largest term."""
    coeffs = np.asarray(variety.coefficients(params))
    if coeffs.ndim != 1:
        raise ValueError("MonomialBasisReduced needs one moduli value, params of shape (m,)")
    scale = np.max(np.abs(coeffs))
    exps = variety.poly.exponents[np.abs(coeffs) > 1e-12 * scale]
    D = variety.degree
    pure = [e for e in exps if e.max() == D]
    if pure:
        return np.asarray(pure[0])
    return np.asarray(max(map(tuple, exps)))


class MonomialBasisReduced(MonomialBasis):
    """Degree-k monomials that are linearly independent on the hypersurface X.

    Removes every monomial divisible by the leading monomial ``m0`` of Q (a term with a
    non-zero coefficient at ``params`` that leads in a lexicographic order; such monomials
    form the normal-form basis of the degree-k part of C[z]/(Q)).  The result is checked
    by a numerical rank test of the sections' Gram matrix on sampled points (``check``).

    Args:
        variety: a :class:`~cyflat.variety.Hypersurface`.
        degree: k >= 1.
        params: moduli (m,) at which the pivot coefficient must be non-zero.
        check: run the rank test (samples points with a fixed key).
    """

    def __init__(self, variety, degree: int, params=None, check: bool = True):
        full = MonomialBasisFull(variety.dim_projective, degree)
        params = variety.check_params(params)
        m0 = _leading_monomial(variety, params)
        keep = ~np.all(full.exponents >= m0[None, :], axis=-1)
        super().__init__(variety.dim_projective, degree, full.exponents[keep])
        self.pivot = tuple(int(x) for x in m0)
        D, n = variety.degree, variety.dim_projective
        expected = math.comb(n + degree, degree) - (math.comb(degree - D + n, n) if degree >= D else 0)
        assert self.size == expected, (self.size, expected)
        if check:
            rank = gram_rank(variety, self, params)
            if rank < self.size:
                raise ValueError(
                    f"reduced basis of size {self.size} has numerical rank {rank} on X at params={params}: "
                    "the moduli may be (close to) singular"
                )


def gram_rank(variety, basis, params, count=None, rtol=None, key=None):
    """Numerical rank of the sections' Gram matrix ``mean_x s(x) s(x)^dagger`` on X.

    Sections are evaluated with the FS normalisation ``s / |z|^k`` (homogeneous points
    of unit norm) so the matrix is scale free.  ``rtol`` defaults to ``1e-9`` relative to
    the largest eigenvalue (float64 round-off sits near 1e-16 for dependent sections).
    """
    count = count or max(4 * basis.size, 2000)
    key = jax.random.PRNGKey(0) if key is None else key
    with jax.enable_x64(True):
        z = variety.sample_intersect(key, jnp.asarray(params, jnp.complex128), count, dtype=jnp.complex128)
        s = np.asarray(basis.values_hom(z))
    gram = s.T @ s.conj() / count
    ev = np.linalg.eigvalsh(gram)
    rtol = 1e-9 if rtol is None else rtol
    return int(np.sum(ev > rtol * ev.max()))


def warn_if_dependent(variety, basis):
    """Warn when a full monomial basis is used at k >= deg Q (dependent on X)."""
    if isinstance(basis, MonomialBasisFull) and basis.degree >= variety.degree:
        warnings.warn(
            f"MonomialBasisFull at k={basis.degree} >= deg Q={variety.degree}: the "
            f"{basis.size} sections are linearly dependent on X (the ansatz is redundant and "
            "H is not unique); use MonomialBasisReduced",
            stacklevel=3,
        )


for _cls in (MonomialBasis, MonomialBasisFull, MonomialBasisReduced):
    jax.tree_util.register_pytree_node(_cls, lambda x: ((), x), lambda aux, _: aux)
del _cls
