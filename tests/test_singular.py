"""Singular members: the exact Dwork discriminant and the general Newton search agree."""

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
