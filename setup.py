"""Install t5x_lite: `pip install -e .` (library + CLI) or `pip install -e .[test]` (adds the
PyTorch / peft references the tests compare against)."""

from setuptools import find_packages, setup

setup(
    name="t5x_lite",
    version="0.1.0",
    description=(
        "A small JAX/Flax NNX codebase for the whole life of a generative language model: "
        "encoder-decoder, decoder-only and encoder-only T5-family models with Hugging Face interop."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["t5x_lite*", "objectives*", "rlhf*", "sharding*", "configs*"]),
    package_data={"t5x_lite": ["assets/*", "assets/**/*"]},
    install_requires=[
        "jax>=0.10,<0.11",
        "flax==0.12.8",
        "optax>=0.2.6,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "chex>=0.1.90,<0.2",
        "grain>=0.2.12,<0.3",
        "array-record>=0.8,<1",
        "datasets>=3,<6",
        "pyarrow>=15",
        "ml_collections>=1.0,<2",
        "transformers>=4.50,<6",
        "safetensors>=0.4,<1",
        "sentencepiece>=0.2,<0.3",
        "rouge-score>=0.1.2,<0.2",
        "sacrebleu>=2.4,<3",
        "matplotlib>=3.8,<4",
        "tqdm>=4.66,<5",
        "numpy>=1.26",
        "tensorboardX>=2.6,<3",
        "qwix==0.1.8",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "torch==2.13.0",
            "peft>=0.13,<1",
            "ruff>=0.6",
            "hypothesis>=6,<7",
            "pytest-xdist>=3.5,<4",
        ],
        "tfds": ["tensorflow-datasets>=4.9"],
        "cuda": ["jax[cuda12]>=0.10,<0.11"],
        "tpu": ["jax[tpu]>=0.10,<0.11"],
        "mutation": ["mutmut>=3.8,<4"],
    },
    entry_points={"console_scripts": ["t5x-lite=t5x_lite.main:run"]},
)
