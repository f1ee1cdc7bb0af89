"""Measurements: model statistics without weights (`model_stats`), train and inference
throughput (`benchmarking`), the input pipeline alone (`input_benchmark`), our steps against
PyTorch's in worker processes (`compare_frameworks`, `step_server`, `jax_steps`, `torch_steps`,
`host_info`), and one device's report (`accelerator_report`, `accelerator_sections`,
`accelerator_prepare`)."""
