"""Shared core of probesuite: configs, sampling, scatter reductions, feature cache, probes, metrics."""
