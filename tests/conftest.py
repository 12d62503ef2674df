"""Test setup: 8 fake CPU devices (set before jax is imported), float32 matmuls, and the
fixtures several test files share: the shipped tokenizer and a tiny T5 in eval mode."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    """The tokenizer shipped with the embedded corpus (vocabulary 1024)."""
    from t5x_lite import corpus, tokenizer

    return tokenizer.load(corpus.DEFAULT_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tiny_t5():
    """A random t5-tiny EncoderDecoder in eval mode."""
    from t5x_lite import config, models

    model = models.build(config.get_preset("t5-tiny"), seed=0)
    model.eval()
    return model


def pytest_collection_modifyitems(config, items):
    """Under mutmut (tests/mutation_score.py), a mutant of `package.module` runs only the unit
    tests mirrored on its module, tests/test_<module>.py (or test_<package>.py): the fast tests
    that own the function, not every model test that happens to call it."""
    mutant = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in mutant:
        return
    mirrored = {f"test_{name}.py" for name in mutant.split(".")[:2]}
    kept = [item for item in items if item.path.name in mirrored]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept
