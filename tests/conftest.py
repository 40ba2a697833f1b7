"""Test settings: CPU only (set before JAX is imported anywhere).

Strict dtype promotion (equinox's conftest) is not switched on: optax's AdamW bias correction
raises a float ** int32 promotion under it (optax 0.2.8), so the training step could not run.
"""

import os
import re

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Hypothesis profiles: "quick" (the default, for the README's command) and "thorough". Tests that
# compile a model per example take their counts from tests.strategies.examples(quick, thorough).
settings.register_profile("quick", deadline=None)
settings.register_profile("thorough", deadline=None, max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "quick"))


_RUNTIME_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWE]\d{4} \d\d:\d\d:\d\d)")


def without_runtime_logs(stderr: str) -> str:
    """A subprocess's stderr without the native runtime's absl log lines, which JAX's plugins
    print at import before any project code runs (e.g. jax-cuda12-plugin on a machine without
    CUDA: "cudart_stub.cc:31] Could not find cuda drivers")."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not _RUNTIME_LOG.match(line))


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import jax.numpy as jnp
    from flax import nnx

    doctest_namespace.update(jnp=jnp, nnx=nnx, jax=jax)


@pytest.fixture
def cli(capsys):
    """Run the `planner` CLI in-process: cli("count", "--preset", "gpt2") -> (code, stdout, stderr)."""
    from planner.cli import main

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
