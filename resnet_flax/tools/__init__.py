"""Measurements: model statistics without weights (`model_stats`), train and inference
throughput (`benchmarking`)."""
