"""Latent Reasoning Workbench: latent-reasoning methods on one shared, KV-cached engine."""

__version__ = "0.1.0"
