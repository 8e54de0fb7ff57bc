"""Test configuration: float64 is enabled for the test session (the library itself never
changes JAX's configuration); tests that check float32 pass complex64/float32 dtypes
explicitly."""

import jax

jax.config.update("jax_enable_x64", True)
