"""Research workflows over whole runs: sweeps and their tables (`sweep`), figures (`plotting`),
per-layer gradient diagnostics (`gradient_flow`)."""
