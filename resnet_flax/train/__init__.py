"""Training: the state (`state`), pure steps (`steps`, `losses`), parallelism (`parallel`), the
run built from a config (`build`), where it starts (`resume`), the loop (`loop`, `loop_state`,
`preemption`), its logs (`metrics_log`) and cluster start-up (`distributed`)."""
