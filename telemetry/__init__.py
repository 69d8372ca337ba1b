"""The leaf every process records into: events on one clock (`events`) and torch.profiler capture (`capture`).
It imports nothing of ours, so the engine may use it while `profiling` (which reads and drives the engine) stays
above both."""
