"""Checkpoints over orbax: the run's store (`store`), resume compatibility (`compat`), reading a
saved run elsewhere and fine-tuning from it (`pretrained`). Nothing else touches the layout."""
