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

_VAR_RE = re.compile(r"^z(0|[1-9]\d*)$")


def parse_polynomial(expr, params: Sequence[str] = (), n: int | None = None):
    """Parse ``expr`` (sympy expression or string) in variables z0..zn and moduli ``params``.

    Returns ``(sympy_expr, variables, param_symbols)``.  Raises ``ValueError`` naming
    the problem for strings that do not parse, unknown symbols, variable indices that
    skip a value, or an empty polynomial.
    """
    if isinstance(params, str):
        params = (params,)  # one name, not its characters
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
            detail = getattr(err, "base_exc", None) or err
            detail = " ".join(f"{type(detail).__name__}: {detail}".split())  # one line
            raise ValueError(f"cannot parse polynomial {expr!r} ({detail})") from None
        expr = parsed
    if not isinstance(expr, sp.Expr):
        raise ValueError(f"polynomial must be a sympy expression or a string, got {type(expr).__name__}")
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise ValueError(f"polynomial {sp.sstr(expr)!r} has a non-finite coefficient (oo, zoo or nan)")
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
        try:
            poly = sp.Poly(expr, *variables)
        except sp.PolynomialError as err:
            raise ValueError(
                f"{sp.sstr(expr)!r} is not a polynomial in {[str(v) for v in variables]} "
                f"({' '.join(str(err).split())})"
            ) from None
        bad = [c for c in poly.coeffs() if c.free_symbols & set(variables)]
        if bad:
            raise ValueError(f"{sp.sstr(expr)!r} is not a polynomial in the coordinates")
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
        self._build_plans()

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
        if not isinstance(params, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(params))):
            raise ValueError(f"params: moduli must be finite, got {np.asarray(params).tolist()}")
        return params.astype(jnp.promote_types(params.dtype, cdtype))

    def coefficients(self, params, dtype=None):
        """Term coefficients at moduli ``params`` (..., m) -> complex (..., T).

        With ``dtype`` the result has that complex dtype (complex64 stays complex64 even
        for float64 moduli); without, the promoted dtype of the moduli.
        """
        params = self.check_params(params, dtype)
        if dtype is not None:
            params = params.astype(jnp.promote_types(dtype, jnp.complex64))
        cdtype = params.dtype
        batch = params.shape[:-1]
        values = self._coeff_fn(*[params[..., i] for i in range(self.num_params)])
        return jnp.stack([jnp.broadcast_to(jnp.asarray(v, cdtype), batch) for v in values], axis=-1)

    # Evaluation strategy (all static, decided once per polynomial).
    #
    # * Monomials are computed by straight-line code over the coordinate slices
    #   z[..., i] (powers by repeated squaring, memoised prefix products; no gathers),
    #   which XLA fuses into one elementwise loop: an order of magnitude faster on CPU
    #   than gathering from a power table.  Very large polynomials, whose straight-line
    #   code would take long to compile, gather from a power table instead.
    # * The gradient uses the "derivative monomials" u = e_t - 1_i (e_ti > 0), each
    #   evaluated once: dQ/dz_i = sum_t e_ti c_t z^u.  Small polynomials (the presets)
    #   contract straight-line too; larger ones stack the monomials and contract with a
    #   matrix product, which compiles much faster.
    # * value_and_gradient takes Q from Euler's identity Q = sum_i z_i dQ/dz_i / D
    #   (exact for a homogeneous Q; same round-off as direct evaluation).

    def _build_plans(self):
        e = self.exponents
        T, n1 = e.shape
        monos = {}
        entries = []  # (i, t, u, e_ti): dQ/dz_i += e_ti c_t z^u
        eye = np.eye(n1, dtype=np.int64)
        for t in range(T):
            for i in range(n1):
                if e[t, i] > 0:
                    u = tuple(int(x) for x in e[t] - eye[i])
                    entries.append((i, t, monos.setdefault(u, len(monos)), int(e[t, i])))
        self._grad_monos = tuple(monos)
        self._grad_entries = tuple(entries)
        self._value_monos = tuple(tuple(int(x) for x in row) for row in e)
        S = np.zeros((T, len(monos), n1))
        for i, t, u, mult in entries:
            S[t, u, i] += mult
        self._grad_matrix = S  # dQ/dz_i = sum_{t,u} c_t S[t, u, i] z^u
        grad_cost = _straight_line_cost(self._grad_monos)
        value_cost = _straight_line_cost(self._value_monos)
        self._straight = {
            self._grad_monos: grad_cost <= _STRAIGHT_LINE_BUDGET,
            self._value_monos: value_cost <= _STRAIGHT_LINE_BUDGET,
        }
        self._grad_fused = grad_cost + len(entries) <= _FUSED_GRAD_BUDGET
        self._value_fused = value_cost + T <= _FUSED_VALUE_BUDGET

    # -- straight-line kernels on coordinate lists ----------------------------------------
    # ``zc`` is a list of the n+1 coordinate arrays (any common batch shape).  Working on
    # separate contiguous arrays instead of a trailing axis of length n+1 lets XLA emit
    # simple elementwise kernels with no strided access, stacking or small reductions.

    def _monomials_coords(self, zc, monos):
        """Straight-line values of monomials (tuples of exponents) -> list of arrays."""
        n1 = self.n + 1
        powers = {}

        def power(i, k):
            if k == 1:
                return zc[i]
            if (i, k) not in powers:
                h = power(i, k // 2)
                v = h * h
                powers[(i, k)] = v * zc[i] if k % 2 else v
            return powers[(i, k)]

        prefixes = {}

        def prefix(m, k):  # prod_{i < k} z_i^m_i, None for the empty product
            if k == 0:
                return None
            key = m[:k]
            if key not in prefixes:
                rest = prefix(m, k - 1)
                if m[k - 1] == 0:
                    prefixes[key] = rest
                else:
                    pk = power(k - 1, m[k - 1])
                    prefixes[key] = pk if rest is None else rest * pk
            return prefixes[key]

        out = []
        for m in monos:
            v = prefix(m, n1)
            out.append(jnp.ones_like(zc[0]) if v is None else v)
        return out

    def _value_coords(self, zc, coeffs):
        """Q from coordinate arrays; coeffs (..., T) broadcast against them."""
        coeffs = jnp.asarray(coeffs)
        if not self._value_fused:
            return self.evaluate(jnp.stack(jnp.broadcast_arrays(*zc), axis=-1), coeffs)
        total = None
        for t, v in enumerate(self._monomials_coords(zc, self._value_monos)):
            term = coeffs[..., t] * v
            total = term if total is None else total + term
        return total

    def _value_and_gradient_coords(self, zc, coeffs):
        """(Q, [dQ/dz_i]) from coordinate arrays; Q by Euler's identity."""
        coeffs = jnp.asarray(coeffs)
        if not self._grad_fused:
            val, grad = self.value_and_gradient(jnp.stack(jnp.broadcast_arrays(*zc), axis=-1), coeffs)
            return val, [grad[..., i] for i in range(self.n + 1)]
        uvals = self._monomials_coords(zc, self._grad_monos)
        grad = [None] * (self.n + 1)
        for i, t, u, mult in self._grad_entries:
            c = coeffs[..., t]
            term = (c if mult == 1 else c * mult) * uvals[u]
            grad[i] = term if grad[i] is None else grad[i] + term
        shape = jnp.broadcast_shapes(*(z.shape for z in zc), coeffs.shape[:-1])
        dtype = jnp.result_type(*zc, coeffs)
        grad = [jnp.zeros(shape, dtype) if g is None else jnp.broadcast_to(g, shape) for g in grad]
        val = zc[0] * grad[0]
        for zi, gi in zip(zc[1:], grad[1:]):
            val = val + zi * gi
        return val * (1.0 / self.degree), grad

    def _line_coefficients_coords(self, pc, qc, coeffs):
        """Coefficients of Q(p + t q) (list of D+1 arrays, ascending) from coordinate lists."""
        D = self.degree
        w = np.exp(2j * np.pi * np.arange(D + 1) / (D + 1))
        vals = [self._value_coords([pi + complex(w[k]) * qi for pi, qi in zip(pc, qc)], coeffs) for k in range(D + 1)]
        out = []
        for j in range(D + 1):  # inverse DFT, straight-line (D+1 is small)
            acc = vals[0]
            for k in range(1, D + 1):
                acc = acc + complex(np.conj(w[(j * k) % (D + 1)])) * vals[k]
            out.append(acc * (1.0 / (D + 1)))
        return out

    # -- array API ----------------------------------------------------------------------

    def _monomial_table(self, z, monos):
        """Monomials (tuples of exponents) at z (..., n+1) -> (..., len(monos)), gathered
        from a power table (large polynomials) or straight-line."""
        if self._straight[monos]:
            return jnp.stack(self._monomials_coords([z[..., i] for i in range(self.n + 1)], monos), axis=-1)
        exps = np.asarray(monos, dtype=np.int64).reshape(len(monos), self.n + 1)
        top = max(int(exps.max()), 1)
        pows = [jnp.ones_like(z), z]
        for _ in range(top - 1):
            pows.append(pows[-1] * z)
        table = jnp.stack(pows, axis=-1).reshape(z.shape[:-1] + ((self.n + 1) * (top + 1),))
        flat = np.arange(self.n + 1)[None, :] * (top + 1) + exps  # (K, n+1)
        return jnp.prod(table[..., flat], axis=-1)

    def monomials(self, z):
        """Values of the T monomials z^e_t at homogeneous points z (..., n+1) -> (..., T)."""
        return self._monomial_table(jnp.asarray(z), self._value_monos)

    def evaluate(self, z, coeffs):
        """Q at homogeneous points z (..., n+1) with coefficients (..., T) -> complex (...)."""
        z = jnp.asarray(z)
        coeffs = jnp.asarray(coeffs)
        if self._value_fused:
            return self._value_coords([z[..., i] for i in range(self.n + 1)], coeffs)
        mono = self._monomial_table(z, self._value_monos)
        if coeffs.ndim == 1:
            return mono @ coeffs
        return jnp.sum(mono * coeffs, axis=-1)

    def value_and_gradient(self, z, coeffs):
        """(Q, dQ/dz (..., n+1)) at homogeneous points; Q from Euler's identity
        ``z . dQ/dz = D Q``."""
        z = jnp.asarray(z)
        coeffs = jnp.asarray(coeffs)
        if self._grad_fused:
            val, grad = self._value_and_gradient_coords([z[..., i] for i in range(self.n + 1)], coeffs)
            return val, jnp.stack(grad, axis=-1)
        uvals = self._monomial_table(z, self._grad_monos)  # (..., U)
        S = self._grad_matrix
        G = (coeffs @ jnp.asarray(S.reshape(S.shape[0], -1), coeffs.dtype)).reshape(coeffs.shape[:-1] + S.shape[1:])
        if G.ndim == 2:
            grad = uvals @ G
        else:
            grad = jnp.einsum("...k,...kj->...j", uvals, G)
        return jnp.sum(z * grad, axis=-1) * (1.0 / self.degree), grad

    def gradient(self, z, coeffs):
        """Holomorphic gradient dQ/dz_i at homogeneous points -> complex (..., n+1)."""
        return self.value_and_gradient(z, coeffs)[1]

    def line_coefficients(self, p, q, coeffs):
        """Coefficients of ``Q(p + t q)`` in ascending powers of t.

        p, q: (..., n+1) line generators; coeffs (..., T).  Returns (..., D+1).  Computed
        exactly up to round-off by evaluating at the D+1 roots of unity t = w^k and an
        inverse discrete Fourier transform (well conditioned for |p|, |q| ~ 1).
        """
        p, q = jnp.broadcast_arrays(jnp.asarray(p), jnp.asarray(q))
        n1 = self.n + 1
        out = self._line_coefficients_coords([p[..., i] for i in range(n1)], [q[..., i] for i in range(n1)], coeffs)
        return jnp.stack(jnp.broadcast_arrays(*out), axis=-1)


def _straight_line_cost(monos):
    """Number of multiplications the straight-line evaluation of ``monos`` emits."""
    powers = set()
    prefixes = set()
    for m in monos:
        for i, k in enumerate(m):
            while k > 1 and (i, k) not in powers:
                powers.add((i, k))
                k //= 2
        for k in range(1, len(m) + 1):
            if m[k - 1]:
                prefixes.add(m[:k])
    return len(powers) + len(prefixes)


# XLA's compile time grows faster than linearly with the length of fused straight-line
# code (the gradient's n+1 outputs especially).  Up to _FUSED_*_BUDGET multiplications
# the whole evaluation is one straight-line block; up to _STRAIGHT_LINE_BUDGET the
# monomials are, and are then contracted with a matrix product; beyond, monomials are
# gathered from a power table.
_FUSED_VALUE_BUDGET = 120
_FUSED_GRAD_BUDGET = 60
_STRAIGHT_LINE_BUDGET = 400


jax.tree_util.register_pytree_node(Polynomial, lambda x: ((), x), lambda aux, _: aux)
