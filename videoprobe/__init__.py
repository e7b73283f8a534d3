"""Video feature probing: decoding, datasets, video encoders, action-recognition probes and benchmarks."""
