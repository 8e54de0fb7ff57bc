"""Homogeneous polynomials in z0..zn with coefficients depending on named moduli.

A :class:`Polynomial` is parsed once with sympy and compiled to

* an integer exponent table ``exponents`` of shape ``(T, n+1)`` (one row per term), and
* a jit-able function ``coefficients(params) -> (..., T)`` of the moduli,

so evaluation is pure JAX with no sympy on the hot path.  Objects are immutable,
hashable and registered as pytrees with no leaves, so they can be closed over or passed
straight through ``jax.jit``.

Conventions: homogeneous points have shape ``(..., n+1)``; moduli ``params`` are a
complex array ``(..., m)`` (``m`` may be 0) whose leading axes broadcast against the
points' batch axes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import sympy as sp

__all__ = ["Polynomial", "parse_polynomial"]

_VAR_RE = re.compile(r"^z(\d+)$")


def parse_polynomial(expr, params: Sequence[str] = (), n: int | None = None):
    """Parse ``expr`` (sympy expression or string) in variables z0..zn and moduli ``params``.

    Returns ``(sympy_expr, variables, param_symbols)``.  Raises ``ValueError`` naming
    the problem for strings that do not parse, unknown symbols, variable indices that
    skip a value, or an empty polynomial.
    """
    params = tuple(str(p) for p in params)
    for p in params:
        if _VAR_RE.match(p):
            raise ValueError(f"parameter name {p!r} clashes with the coordinate names z0..zn")
    if len(set(params)) != len(params):
        raise ValueError(f"duplicate parameter names in {params}")
    local = {name: sp.Symbol(name) for name in params}
    if isinstance(expr, str):
        try:
            parsed = sp.sympify(expr, locals=local)
        except (sp.SympifyError, SyntaxError, TypeError) as err:
            raise ValueError(f"cannot parse polynomial {expr!r}: {err}") from None
        expr = parsed
    if not isinstance(expr, sp.Expr):
        raise ValueError(f"polynomial must be a sympy expression or a string, got {type(expr).__name__}")
    expr = sp.expand(expr)
    if expr == 0:
        raise ValueError("the polynomial is identically zero")

    indices = {}
    unknown = []
    param_syms = {}
    for s in expr.free_symbols:
        m = _VAR_RE.match(s.name)
        if m:
            indices[int(m.group(1))] = s
        elif s.name in params:
            param_syms[s.name] = s
        else:
            unknown.append(s.name)
    if unknown:
        raise ValueError(
            f"unknown symbol(s) {sorted(unknown)} in polynomial; coordinates are z0..zn "
            f"and declared parameters are {list(params)} (pass params=[...] to declare moduli)"
        )
    if not indices:
        raise ValueError("the polynomial contains no coordinates z0..zn")
    top = max(indices)
    if n is None:
        n = top
        missing = sorted(set(range(n + 1)) - set(indices))
        if missing:
            raise ValueError(
                f"coordinate indices skip {['z%d' % i for i in missing]}: variables must be "
                f"z0..z{n} (pass n= explicitly if a coordinate really does not appear)"
            )
    elif top > n:
        raise ValueError(f"polynomial uses z{top} but the ambient space is P^{n}")
    variables = tuple(indices.get(i, sp.Symbol(f"z{i}")) for i in range(n + 1))
    param_symbols = tuple(param_syms.get(p, sp.Symbol(p)) for p in params)
    return expr, variables, param_symbols


class Polynomial:
    """A homogeneous polynomial ``Q(z; params)`` on C^{n+1}.

    Args:
        expr: sympy expression or string in ``z0..zn`` and the names in ``params``.
        params: names of the moduli, in the order of the ``params`` arrays.
        n: ambient projective dimension (default: the largest coordinate index).

    Attributes:
        n: ambient dimension (points have ``n+1`` homogeneous coordinates).
        degree: total degree ``D``.
        exponents: ``np.ndarray`` int (T, n+1).
        param_names: tuple of moduli names (length ``m``).
    """

    def __init__(self, expr, params: Sequence[str] = (), n: int | None = None):
        expr, variables, param_symbols = parse_polynomial(expr, params, n)
        poly = sp.Poly(expr, *variables)
        degrees = {sum(monom) for monom in poly.monoms()}
        if len(degrees) != 1:
            raise ValueError(
                f"polynomial is not homogeneous: its terms have degrees {sorted(degrees)}"
            )
        self.expr = expr
        self.variables = variables
        self.param_symbols = param_symbols
        self.param_names = tuple(p.name for p in param_symbols)
        self.n = len(variables) - 1
        self.degree = degrees.pop()
        if self.degree < 1:
            raise ValueError("polynomial has degree 0")
        monoms, coeffs = zip(*poly.terms())
        self.exponents = np.asarray(monoms, dtype=np.int32)
        self.coefficient_exprs = tuple(sp.sympify(c) for c in coeffs)
        self._coeff_fn = sp.lambdify(param_symbols, list(self.coefficient_exprs), modules="jax")
        self._key = (sp.srepr(expr), self.param_names, self.n)

    # -- identity ---------------------------------------------------------------------
    def __hash__(self):
        return hash(self._key)

    def __eq__(self, other):
        return isinstance(other, Polynomial) and self._key == other._key

    def __repr__(self):
        params = f", params={list(self.param_names)}" if self.param_names else ""
        return f"Polynomial({sp.sstr(self.expr)!r}{params}, n={self.n})"

    def latex(self) -> str:
        """LaTeX form of the polynomial (for printing and notebooks)."""
        return sp.latex(self.expr)

    def _repr_latex_(self):
        return f"${self.latex()}$"

    @property
    def num_params(self) -> int:
        return len(self.param_names)

    @property
    def num_terms(self) -> int:
        return self.exponents.shape[0]

    # -- numerics ---------------------------------------------------------------------
    def check_params(self, params, dtype=None):
        """Validate and convert moduli to a complex array (..., m); ``None`` means no moduli."""
        m = self.num_params
        cdtype = jnp.result_type(complex) if dtype is None else dtype
        if params is None:
            if m:
                raise ValueError(f"params: this polynomial needs {m} moduli {list(self.param_names)}, got None")
            return jnp.zeros((0,), cdtype)
        params = jnp.asarray(params)
        if params.ndim == 0:
            params = params[None]
        if params.shape[-1] != m:
            raise ValueError(
                f"params: expected {m} moduli {list(self.param_names)} along the last axis, "
                f"got shape {tuple(params.shape)}"
            )
        return params.astype(jnp.promote_types(params.dtype, cdtype))

    def coefficients(self, params, dtype=None):
        """Term coefficients at moduli ``params`` (..., m) -> complex (..., T)."""
        params = self.check_params(params, dtype)
        cdtype = params.dtype
        batch = params.shape[:-1]
        values = self._coeff_fn(*[params[..., i] for i in range(self.num_params)])
        return jnp.stack([jnp.broadcast_to(jnp.asarray(v, cdtype), batch) for v in values], axis=-1)

    def _power_table(self, z):
        """z (..., n+1) -> z**p for p = 0..degree, shape (..., n+1, degree+1)."""
        pows = [jnp.ones_like(z), z]
        for _ in range(self.degree - 1):
            pows.append(pows[-1] * z)
        return jnp.stack(pows[: self.degree + 1], axis=-1)

    def _monomials(self, pw, exponents):
        """Evaluate monomials with exponent table (..., n+1) from a power table."""
        cols = np.broadcast_to(np.arange(self.n + 1), exponents.shape)
        return jnp.prod(pw[..., cols, exponents], axis=-1)

    def evaluate(self, z, coeffs):
        """Q at homogeneous points z (..., n+1) with coefficients (..., T) -> complex (...)."""
        pw = self._power_table(z)
        return jnp.sum(coeffs * self._monomials(pw, self.exponents), axis=-1)

    def gradient(self, z, coeffs):
        """Holomorphic gradient dQ/dz_i at homogeneous points -> complex (..., n+1)."""
        pw = self._power_table(z)
        return self._gradient_from_powers(pw, coeffs)

    def _gradient_from_powers(self, pw, coeffs):
        e = self.exponents
        eye = np.eye(self.n + 1, dtype=np.int32)
        dexp = np.maximum(e[None, :, :] - eye[:, None, :], 0)  # (n+1, T, n+1)
        mult = e.T  # (n+1, T): exponent of z_i in term t
        mono = self._monomials(pw, dexp)  # (..., n+1, T)
        return jnp.sum(coeffs[..., None, :] * mult * mono, axis=-1)

    def value_and_gradient(self, z, coeffs):
        """(Q, dQ/dz) at homogeneous points sharing one power table."""
        pw = self._power_table(z)
        val = jnp.sum(coeffs * self._monomials(pw, self.exponents), axis=-1)
        return val, self._gradient_from_powers(pw, coeffs)

    def line_coefficients(self, p, q, coeffs):
        """Coefficients of ``Q(p + t q)`` in ascending powers of t.

        p, q: (..., n+1) line generators; coeffs (..., T).  Returns (..., D+1).  Computed
        exactly up to round-off by evaluating at the D+1 roots of unity t = w^k and an
        inverse discrete Fourier transform (well conditioned for |p|, |q| ~ 1).
        """
        D = self.degree
        k = np.arange(D + 1)
        roots = np.exp(2j * np.pi * k / (D + 1))
        dtype = jnp.result_type(p, q)
        t = jnp.asarray(roots, dtype)
        pts = p[..., None, :] + t[:, None] * q[..., None, :]  # (..., D+1, n+1)
        vals = self.evaluate(pts, coeffs[..., None, :])  # (..., D+1)
        inv_dft = jnp.asarray(np.exp(-2j * np.pi * np.outer(k, k) / (D + 1)) / (D + 1), dtype)
        return vals @ inv_dft.T


jax.tree_util.register_pytree_node(Polynomial, lambda x: ((), x), lambda aux, _: aux)
