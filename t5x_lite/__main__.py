"""`python -m t5x_lite ...` is the `t5x-lite` command."""

from t5x_lite.main import run

run()
