"""Batched, jit-able roots of univariate polynomials (Aberth–Ehrlich).

Runs on every JAX backend: elementwise arithmetic and one ``lax.while_loop``; no
``jnp.roots``, eigensolvers or host callbacks.  The dtype follows the input
(complex64 or complex128; real input is promoted to complex).  Roots are accurate
to a few ulps times their condition number in float64; float32 is usable.

Conventions
-----------
Coefficients are in ASCENDING powers, shape ``(..., D+1)``, static ``D >= 1``::

    p(t)    = sum_j a[..., j] t**j                 (affine form)
    F(s, t) = sum_j a[..., j] s**(D-j) t**j        (binary form)

``F`` has exactly ``D`` projective roots ``[s : t]`` counted with multiplicity:
``[1 : t]`` is a finite root ``t`` of ``p`` and ``[0 : 1]`` a root at infinity
(one per vanishing leading coefficient).  On the line ``p + t q`` the root
``[s : t]`` is the point ``s p + t q``.

Method
------
1. Scale the coefficients by their largest modulus (max-norm, overflow safe);
   all-zero or non-finite coefficients are flagged (``converged = False``).
2. Split off exact zeros exactly: ``lo`` vanishing low-order coefficients are
   ``lo`` roots ``t = 0``; vanishing high-order coefficients are roots at
   infinity.  The rest, ``c_k = a_{lo+k}``, has degree ``d`` and ``c_0 c_d != 0``.
3. Orientation (per polynomial, branch-free): if ``|c_d| >= |c_0|`` solve
   ``c(t) = 0``, else solve the reversed polynomial in ``u = 1/t``.  The solved
   polynomial ``b`` has ``|b_0| <= |b_d|``: the product of its root moduli is
   ``<= 1`` and a relatively tiny leading coefficient becomes a small, well
   conditioned root ``u`` instead of a huge ``t``.
4. Balance: substitute ``z = rho x`` with ``rho = |b_0/b_d|**(1/d)`` (the radius of
   the usual Aberth start circle), so the roots ``x`` have geometric-mean
   modulus 1 and evaluating the polynomial stays far from under/overflow.
5. Aberth–Ehrlich: all roots at once, ``x_i <- x_i - N_i / (1 - N_i S_i)`` with
   ``N_i = b(x_i)/b'(x_i)`` and ``S_i = sum_{j != i} 1/(x_i - x_j)``, started on
   the unit circle with an irrational angle offset.  A root freezes once its
   update is ``<= C eps |x|`` or its residual is at rounding level,
   ``|b(x)| <= C eps sum_k |b_k||x|^k`` (near-multiple roots cannot do better);
   the loop stops when every root of the batch is frozen or after ``max_iter``.
6. Two Newton steps polish each root (never more than half-way to a neighbour).
7. Map back: ``[s : t] = [1 : z]`` (not reversed) or ``[z : 1]`` (reversed),
   scaled so that ``max(|s|, |t|) == 1``.

Internally the root / coefficient index is the LEADING axis, ``b: (D+1, ...)``,
``x: (D, ...)``: the static loops over it then act on contiguous batch-sized
slices, which vectorises well on CPU and keeps the compiled program small.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jax.Array

__all__ = ["polyroots", "projective_roots"]

_TOL = 8.0  # stopping tolerance, in units of the dtype's eps
_ANGLE0 = 0.4  # start-circle angle offset (an irrational multiple of pi)


def _nrm(x):
    """max(|Re x|, |Im x|): a cheap modulus, within a factor sqrt(2) of |x|."""
    return jnp.maximum(jnp.abs(x.real), jnp.abs(x.imag))


def _horner(b, x):
    """b(x) and b'(x); b: (n+1, ...) ascending coefficients, x: (D, ...)."""
    p, dp = jnp.broadcast_to(b[-1], x.shape), jnp.zeros_like(x)
    for bj in b[-2::-1]:
        dp = dp * x + p
        p = p * x + bj
    return p, dp


def _horner_abs(babs, r):
    """sum_k |b_k| r**k: the scale of the rounding error of a Horner evaluation."""
    q = jnp.broadcast_to(babs[-1], r.shape)
    for bj in babs[-2::-1]:
        q = q * r + bj
    return q


def _solve(coeffs, max_iter):
    """Roots x of the oriented, balanced polynomial, plus the bookkeeping to map back."""
    a = jnp.asarray(coeffs)
    a = a.astype(jnp.promote_types(a.dtype, jnp.complex64))
    if a.ndim < 1 or a.shape[-1] < 2:
        raise ValueError(f"need coefficients of shape (..., D+1) with D >= 1, got {a.shape}")
    D = a.shape[-1] - 1
    cdt = a.dtype
    rdt = jnp.finfo(cdt).dtype
    tol = _TOL * jnp.finfo(cdt).eps
    a = jnp.moveaxis(a, -1, 0)  # (D+1, ...)
    j = jnp.arange(D + 1).reshape((D + 1,) + (1,) * (a.ndim - 1))
    k = j[:D]

    # 1. scale (max-norm: cannot overflow); all-zero or non-finite input is degenerate
    amax = jnp.max(_nrm(a), axis=0)
    degenerate = ~(jnp.isfinite(amax) & (amax > 0))
    a = jnp.where(degenerate, 0, a * (1 / jnp.where(degenerate, 1, amax)).astype(cdt))

    # 2./3. exact zeros and orientation
    nz = a != 0
    lo = jnp.where(degenerate, 0, jnp.argmax(nz, axis=0))  # first nonzero: lo roots t = 0
    hi = jnp.where(degenerate, D, D - jnp.argmax(nz[::-1], axis=0))  # last nonzero: D-hi at inf
    deg = hi - lo
    a_lo = jnp.take_along_axis(a, lo[None], 0)[0]
    a_hi = jnp.take_along_axis(a, hi[None], 0)[0]
    flip = jnp.abs(a_hi) < jnp.abs(a_lo)
    idx = jnp.where(flip, hi - j, lo + j)  # b_j = a_{lo+j}, or a_{hi-j} if flipped
    b = jnp.where(j <= deg, jnp.take_along_axis(a, jnp.clip(idx, 0, D), 0), 0)

    # 4. balance: z = rho x; renormalise
    ratio = jnp.abs(b[0]) / jnp.where(degenerate, 1, jnp.abs(jnp.where(flip, a_lo, a_hi)))
    rho = jnp.exp(jnp.log(jnp.where(ratio > 0, ratio, 1)) / jnp.maximum(deg, 1).astype(rdt))
    powers = [jnp.ones_like(rho)]
    for _ in range(D):
        powers.append(powers[-1] * rho)
    b = b * jnp.stack(powers).astype(cdt)
    bmax = jnp.max(jnp.abs(b), axis=0)
    b = b * (1 / jnp.where(bmax == 0, 1, bmax)).astype(cdt)
    babs = jnp.abs(b)

    # 5. Aberth-Ehrlich.  active: roots of b (the others are the exact 0 / inf roots).
    active = k < deg
    # start directions exp(i (2 pi k/d + offset)), tabulated for each possible degree d
    d_tab = np.maximum(np.arange(D + 1), 1)[:, None]
    unit = np.exp(1j * (2 * np.pi * np.arange(D)[None, :] / d_tab + _ANGLE0)).astype(cdt)
    x0 = jnp.where(active, jnp.moveaxis(jnp.asarray(unit)[deg], -1, 0), 0)
    # S_i = sum_k 1/(x_i - x_{i-k}) over the cyclic shifts k = 1..D-1 of the root axis;
    # pairs with an inactive partner are dropped, exactly coincident pairs are treated
    # as a distance eps apart (with opposite signs for the two members), which
    # separates them.
    partner = [jnp.roll(active, s, axis=0) & active for s in range(1, D)]
    sign = [jnp.where(k >= s, 1, -1) for s in range(1, D)]
    far = 1 / jnp.finfo(cdt).eps
    kick = jnp.asarray(1e-2 * (0.6 + 0.8j), cdt)

    def pair_sums(x):
        S = jnp.zeros_like(x)
        for s in range(1, D):
            d = x - jnp.roll(x, s, axis=0)
            m = d.real * d.real + d.imag * d.imag
            inv = jnp.where(m == 0, far * sign[s - 1], jnp.conj(d) / jnp.where(m == 0, 1, m))
            S = S + jnp.where(partner[s - 1], inv, 0)
        return S

    def still(x, xp):  # did the last update move x by at most tol |x|?
        return _nrm(x - xp) <= tol * _nrm(x)

    # state (previous x, x): a root is frozen once its last update was tiny, or once
    # its residual reached rounding level (then it is not updated, i.e. moves by 0).
    def cond(state):
        xp, x, it = state
        return (it < max_iter) & ~jnp.all(still(x, xp))

    def body(state):
        xp, x, it = state
        p, dp = _horner(b, x)
        den = dp - p * pair_sums(x)
        nudge = x - kick * (1 + _nrm(x))  # for b' - b S = 0 or an overflowing step
        xnew = jnp.where(den == 0, nudge, x - p / jnp.where(den == 0, 1, den))
        xnew = jnp.where(jnp.isfinite(xnew), xnew, nudge)
        stop = still(x, xp) | (_nrm(p) <= tol * _horner_abs(babs, jnp.abs(x)))
        return x, jnp.where(stop, x, xnew), it + 1

    xp0 = jnp.where(active, x0 + 2, 0)  # anything not "still"
    xp, x, _ = lax.while_loop(cond, body, (xp0, x0, jnp.asarray(0, jnp.int32)))
    converged = jnp.all(still(x, xp), axis=0)

    # 6. Newton polishing, never jumping more than half-way to the nearest other root
    gap = jnp.full(x.shape, jnp.inf, rdt)
    for s in range(1, D):
        gap = jnp.minimum(gap, jnp.where(partner[s - 1], _nrm(x - jnp.roll(x, s, axis=0)), jnp.inf))

    def polish(_, x):
        p, dp = _horner(b, x)
        step = p / jnp.where(dp == 0, 1, dp)
        ok = active & (dp != 0) & jnp.isfinite(step) & (_nrm(step) < 0.5 * gap)
        return jnp.where(ok, x - step, x)

    z = rho.astype(cdt) * lax.fori_loop(0, 2, polish, x)  # roots of the oriented polynomial
    converged = converged & jnp.all(jnp.isfinite(z), axis=0) & ~degenerate
    # root k of the input: k < deg: z_k (1/z_k if flipped); then lo roots 0, then inf
    kind = jnp.where(active, 0, jnp.where(k < deg + lo, 1, 2))
    return z, flip, kind, converged


# The public functions pass max_iter positionally to these jitted cores, so it is
# traced: any max_iter reuses the compiled program of a given shape and dtype.


@jax.jit
def _projective_roots(coeffs, max_iter):
    z, flip, kind, converged = _solve(coeffs, max_iter)
    big = jnp.abs(z) > 1
    w = jnp.where(big, 1 / jnp.where(big, z, 1), z)  # |w| <= 1
    swap = flip ^ big  # [1 : z] = [1/z : 1] and [z : 1] = [1 : 1/z]
    s = jnp.select([kind == 1, kind == 2, swap], [1, 0, w], 1).astype(z.dtype)
    t = jnp.select([kind == 1, kind == 2, swap], [0, 1, 1], w).astype(z.dtype)
    return jnp.moveaxis(s, 0, -1), jnp.moveaxis(t, 0, -1), converged


@jax.jit
def _polyroots(coeffs, max_iter):
    z, flip, kind, converged = _solve(coeffs, max_iter)
    r = jnp.where(flip, 1 / jnp.where(z == 0, 1, z), z)
    r = jnp.where(flip & (z == 0), jnp.inf, r)
    r = jnp.select([kind == 1, kind == 2], [0, jnp.inf], r).astype(z.dtype)
    r = jnp.where(jnp.isfinite(r), r, jnp.asarray(jnp.inf, z.dtype))
    return jnp.moveaxis(r, 0, -1), converged


def projective_roots(coeffs, *, max_iter: int = 80) -> tuple[Array, Array, Array]:
    """Roots of the binary form ``F(s, t) = sum_j coeffs[..., j] s**(D-j) t**j``.

    Args:
      coeffs: ``(..., D+1)`` complex (real is promoted) coefficients in ASCENDING
        powers of ``t``; ``D >= 1`` is static (last-axis size minus one); any batch
        shape ``...``.  Works under ``jax.jit`` and ``jax.vmap``.
      max_iter: maximum number of Aberth iterations; the whole batch iterates until
        every root has converged or this limit is reached.  It is traced, so
        changing it does not recompile.

    Returns:
      ``(s, t, converged)``.

      ``s``, ``t``: complex ``(..., D)`` in the input's complex dtype, the ``D``
      projective roots ``[s : t]`` with multiplicity, in no particular order,
      normalised so that ``max(|s|, |t|) == 1`` (one of the two is exactly 1).
      ``[1 : t]`` is the finite root ``t`` of ``p(t) = F(1, t)``; ``s == 0`` exactly
      once per vanishing leading coefficient (root at infinity) and ``t == 0``
      exactly once per vanishing constant coefficient.  Always finite.  On the
      line ``p + t q`` the root is the point ``s p + t q``.

      ``converged``: bool ``(...)``, False where any root failed (``max_iter``
      reached or a non-finite value), where all coefficients are zero (every
      point is a root) and where any coefficient is inf/nan; ``s, t`` are then
      arbitrary finite values.
    """
    return _projective_roots(coeffs, max_iter)


def polyroots(coeffs, *, max_iter: int = 80) -> tuple[Array, Array]:
    """Roots of ``p(t) = sum_j coeffs[..., j] t**j`` (ASCENDING powers).

    Args:
      coeffs: ``(..., D+1)`` complex (real is promoted) coefficients, ``D >= 1``
        static; any batch shape ``...``.  Works under ``jax.jit`` and ``jax.vmap``.
      max_iter: maximum number of Aberth iterations (see ``projective_roots``).

    Returns:
      ``(roots, converged)``.

      ``roots``: complex ``(..., D)`` in the input's complex dtype, with
      multiplicity, in no particular order.  Each vanishing leading coefficient
      gives a root at infinity, returned as ``complex(inf, 0)``, as is a finite
      root too large for the dtype (relatively tiny leading coefficient); the
      other roots stay accurate.

      ``converged``: bool ``(...)``, False where any root failed, where all
      coefficients are zero and where any is inf/nan (roots then arbitrary).
    """
    return _polyroots(coeffs, max_iter)
