"""metarec-jax: meta-learning recommender systems for cold start, in JAX."""

__version__ = "0.1.0"
