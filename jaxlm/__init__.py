"""jaxlm: train, post-train and scale language models with JAX and Flax NNX."""

__version__ = "0.1.0"
