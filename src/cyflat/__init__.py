"""cyflat: numerical Ricci-flat (Calabi-Yau) metrics with JAX.

Importing cyflat never changes JAX's global configuration: choose the precision
yourself, e.g. ``jax.config.update("jax_enable_x64", True)`` for float64, or use the
``dtype`` arguments of the samplers.
"""

from . import donaldson, ml, projective, random
from .metric import AlgebraicMetric, LocalMetric, sigma_from_eta
from .polynomial import Polynomial
from .sections import MonomialBasis, MonomialBasisFull, MonomialBasisReduced
from .variety import (
    Dwork,
    Fermat,
    Hypersurface,
    MCEstimate,
    Sample,
    TwoParameterQuintic,
    VarietySingle,
)

__version__ = "0.1.0"

__all__ = [
    "AlgebraicMetric",
    "Dwork",
    "Fermat",
    "Hypersurface",
    "LocalMetric",
    "MCEstimate",
    "MonomialBasis",
    "MonomialBasisFull",
    "MonomialBasisReduced",
    "Polynomial",
    "Sample",
    "TwoParameterQuintic",
    "VarietySingle",
    "donaldson",
    "ml",
    "projective",
    "random",
    "sigma_from_eta",
]
