"""Test configuration (tests only; the library itself never changes JAX's configuration).

* float64 is enabled for the session; float32 checks pass complex64/float32 explicitly.
* XLA's persistent compilation cache is pointed at a per-session temporary directory
  (also exported to subprocesses), so the many small training runs in the suite compile
  each program once.
"""

import os
import shutil
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

_CACHE = tempfile.mkdtemp(prefix="cyflat-jax-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)
