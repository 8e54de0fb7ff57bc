"""Sections of O(k): degree-k monomials in the homogeneous coordinates.

A section basis holds a static exponent table ``exponents`` (N, n+1) and evaluates, in
an affine patch (``z_patch = 1``), the values ``s_alpha`` (..., N) and their affine
derivatives ``ds_alpha / dz_j`` (..., n, N), or (:meth:`MonomialBasis.jets_hom`) values
and derivatives along given tangent vectors (..., 1+D, N).  Monomials are built by the
recursion "degree-j monomials = z_i times a suffix of the degree-(j-1) list" with the
product rule carried along (forward mode by hand): slices, real multiplies and
concatenations, no gathers and no per-point Python.

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
        exps = np.asarray(exponents)
        if exps.ndim != 2 or exps.shape[1] != self.n + 1 or exps.shape[0] == 0:
            raise ValueError(f"exponents must be a non-empty table (N, {self.n + 1}), got shape {exps.shape}")
        if not np.issubdtype(exps.dtype, np.integer) or np.any(exps < 0) or np.any(exps.sum(axis=1) != self.degree):
            raise ValueError(f"exponents must be non-negative integers with row sums equal to the degree {self.degree}")
        self.exponents = exps.astype(np.int32)
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

    @property
    def _plan(self):
        """Static evaluation plan (built once per basis, see :class:`_MonomialPlan`)."""
        plan = self.__dict__.get("_plan_cache")
        if plan is None:
            plan = _MonomialPlan(self.n, self.degree, self.exponents)
            self.__dict__["_plan_cache"] = plan
        return plan

    def jets_hom(self, zh, tangents=None, method="recursion"):
        """Values and directional derivatives of the sections at homogeneous points.

        Args:
            zh: complex (..., n+1) homogeneous points.
            tangents: complex (..., D, n+1) homogeneous tangent vectors, or None (D = 0).
            method: ``"recursion"`` (fast, see :meth:`jets_hom_real`) or ``"powers"``
                (power tables and gathers: slower, but a small program, cheap to compile
                under nested autodiff such as the Ricci tensor).
        Returns:
            complex (..., 1+D, N): ``[..., 0, :] = s(zh)`` and
            ``[..., 1+a, :] = sum_i t_ai ds/dz_i`` (derivative along tangent ``a``).
        """
        zh = jnp.asarray(zh)
        zr, zi = jnp.real(zh), jnp.imag(zh)
        tr = ti = None
        if tangents is not None:
            tangents = jnp.asarray(tangents)
            tr, ti = jnp.real(tangents), jnp.imag(tangents)
        if method == "powers":
            xr, xi = self._plan.jets_powers(zr, zi, tr, ti)
        elif method == "recursion":
            xr, xi = self.jets_hom_real(zr, zi, tr, ti)
        else:
            raise ValueError(f"method must be 'recursion' or 'powers', got {method!r}")
        return jax.lax.complex(xr, xi)

    def jets_hom_real(self, zr, zi, tr=None, ti=None):
        """:meth:`jets_hom` on real and imaginary parts: returns ``(Re X, Im X)`` (..., 1+D, N).

        Forward-mode product rule along the recursive (lex) structure of the monomials:
        the degree-j monomials are ``z_i`` times a contiguous suffix of the degree-(j-1)
        ones, so evaluation is slices, real multiplies and concatenations (no gathers,
        no complex arithmetic, which XLA's CPU backend vectorises poorly).  The cost is
        about ``(1 + 2D) sum_j C(n+j, j)`` complex multiplies per point.
        """
        return _jets_jit(self, zr, zi, tr, ti)

    def values_hom(self, zh):
        """Monomials at homogeneous points zh (..., n+1) -> (..., N).

        Products of k gathered coordinates (static factor table): for values alone this
        is faster than the recursion of :meth:`jets_hom` and much cheaper to compile
        and to differentiate twice (Kaehler potentials under autodiff)."""
        return _values_jit(self, jnp.asarray(zh))

    def __call__(self, zs, patch):
        """Section values at affine points zs (..., n) in ``patch`` -> (..., N)."""
        zs = jnp.asarray(zs)
        if zs.ndim < 1 or zs.shape[-1] != self.n:
            raise ValueError(f"zs must be affine points (..., {self.n}), got shape {zs.shape}")
        patch = proj.check_index("patch", patch, self.n + 1, zs.shape[:-1])
        return self.values_hom(proj.affine_to_hom(zs, patch))

    def values_and_jacobian(self, zs, patch):
        """Values (..., N) and affine derivatives ``ds_alpha/dz_j`` (..., n, N)."""
        zs = jnp.asarray(zs)
        zh = proj.affine_to_hom(zs, patch)
        # Affine direction j is the homogeneous unit vector j + (j >= patch).
        patch = jnp.broadcast_to(jnp.asarray(patch, jnp.int32), zs.shape[:-1])
        rows = proj.index_affine_to_hom(jnp.arange(self.n), patch[..., None])  # (..., n)
        tangents = (rows[..., None] == jnp.arange(self.n + 1)).astype(zs.dtype)  # (..., n, n+1)
        X = self.jets_hom(zh, tangents)
        return X[..., 0, :], X[..., 1:, :]


@jax.jit
def _values_jit(basis, zh):
    return basis._plan.values(zh)


@jax.jit
def _jets_jit(basis, zr, zi, tr, ti):
    # One compiled kernel per (basis, shapes): eager calls would otherwise dispatch (and
    # compile) the recursion's many small operations one by one.
    return basis._plan.jets(zr, zi, tr, ti)


class _MonomialPlan:
    """Static structure for evaluating a monomial basis by the recursion
    ``m_j = concat_i z_i * m_{j-1}[start_{j-1,i}:]`` over the lex-ordered lists of all
    degree-j monomials (``monomial_exponents``: the monomials in z_i..z_n form a suffix),
    then selecting the basis rows with a few contiguous slices (a gather if there are
    many runs; power tables if the rows are not degree-k monomials)."""

    def __init__(self, n, degree, exponents):
        self.n, self.degree = n, degree
        # starts[j][i]: first degree-j monomial in the variables z_i..z_n (j = 0..k-1).
        self.starts = [
            [math.comb(n + j, j) - math.comb(n - i + j, j) for i in range(n + 1)] for j in range(degree)
        ]
        self.exponents = np.asarray(exponents, dtype=np.int32)
        full = {tuple(e): r for r, e in enumerate(monomial_exponents(n, degree).tolist())}
        rows = [full.get(tuple(e)) for e in self.exponents.tolist()]
        self.rows = None if any(r is None for r in rows) else np.asarray(rows, dtype=np.int32)
        runs = []
        for r in [] if self.rows is None else self.rows.tolist():
            if runs and runs[-1][1] == r:
                runs[-1][1] = r + 1
            else:
                runs.append([r, r + 1])
        self.runs = [tuple(r) for r in runs]
        self.full_size = len(full)
        # factors[alpha] = (i_1 <= ... <= i_k): s_alpha = z_i1 ... z_ik.
        self.factors = None
        if self.rows is not None:
            self.factors = np.stack([np.repeat(np.arange(n + 1), e) for e in self.exponents]).astype(np.int32)
            self.factors = self.factors.reshape(len(self.exponents), degree)

    def values(self, zh):
        """Monomial values (..., n+1) -> (..., N) (complex)."""
        if self.factors is None:
            xr, xi = self.jets_powers(jnp.real(zh), jnp.imag(zh), None, None)
            return jax.lax.complex(xr, xi)[..., 0, :]
        return jnp.prod(zh[..., self.factors], axis=-1)

    def _select(self, x):
        if len(self.runs) == 1 and self.runs[0] == (0, self.full_size):
            return x
        if len(self.runs) <= 8:
            return jnp.concatenate([x[..., a:b] for a, b in self.runs], axis=-1)
        return jnp.take(x, jnp.asarray(self.rows), axis=-1)

    def jets(self, zr, zi, tr, ti):
        """Real and imaginary parts: z (..., n+1), t (..., D, n+1) or None -> 2 x (..., 1+D, N)."""
        zr, zi = jnp.asarray(zr), jnp.asarray(zi)
        if self.rows is None:
            return self.jets_powers(zr, zi, tr, ti)
        S = zr.shape[:-1]
        D = 0 if tr is None else tr.shape[-2]
        dtype = zr.dtype
        # Level 0: the monomial 1 with zero derivatives; (..., 1+D, 1).
        jr = jnp.concatenate([jnp.ones(S + (1, 1), dtype), jnp.zeros(S + (D, 1), dtype)], axis=-2)
        ji = jnp.zeros_like(jr)
        if D:
            # tt_i = (0, t_1i, ..., t_Di): the product rule adds tt_i * value to the jet.
            zero = jnp.zeros(S + (1, self.n + 1), dtype)
            ttr = jnp.concatenate([zero, jnp.asarray(tr, dtype)], axis=-2)
            tti = jnp.concatenate([zero, jnp.asarray(ti, dtype)], axis=-2)
        for j in range(self.degree):
            pr, pi = [], []
            for i, s in enumerate(self.starts[j]):
                sr, si = jr[..., s:], ji[..., s:]
                a, b = zr[..., i, None, None], zi[..., i, None, None]
                re = a * sr - b * si
                im = a * si + b * sr
                if D:
                    c, d = ttr[..., i, None], tti[..., i, None]
                    vr, vi = sr[..., :1, :], si[..., :1, :]
                    re = re + (c * vr - d * vi)
                    im = im + (c * vi + d * vr)
                pr.append(re)
                pi.append(im)
            jr = jnp.concatenate(pr, axis=-1)
            ji = jnp.concatenate(pi, axis=-1)
        return self._select(jr), self._select(ji)

    def jets_powers(self, zr, zi, tr, ti):
        """Power tables and gathers: exponent tables that are not degree-k monomials, and
        nested autodiff (a much smaller program than the recursion)."""
        z = jax.lax.complex(zr, zi)
        e = self.exponents
        pows = [jnp.ones_like(z)]
        for _ in range(int(e.max(initial=0))):
            pows.append(pows[-1] * z)
        pw = jnp.stack(pows, axis=-1)  # (..., n+1, p+1)
        cols = np.broadcast_to(np.arange(self.n + 1), e.shape)
        values = jnp.prod(pw[..., cols, e], axis=-1)[..., None, :]  # (..., 1, N)
        if tr is not None:
            t = jax.lax.complex(jnp.asarray(tr), jnp.asarray(ti))
            eye = np.eye(self.n + 1, dtype=np.int32)
            dexp = np.maximum(e[None] - eye[:, None, :], 0)  # (n+1, N, n+1)
            dcols = np.broadcast_to(np.arange(self.n + 1), dexp.shape)
            dhom = e.T * jnp.prod(pw[..., dcols, dexp], axis=-1)  # (..., n+1, N)
            values = jnp.concatenate([values, t @ dhom], axis=-2)
        return jnp.real(values), jnp.imag(values)


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
        params = variety.check_params(params, jnp.complex128)
        z = variety.sample_intersect(key, params, count, dtype=jnp.complex128)
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
