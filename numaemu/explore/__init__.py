"""``numaemu check``'s engine: a deterministic scheduler that steps the patching layer's own code
(protocols, reader, checker) through every interleaving of a few nodes (scheduler), and the system
it steps (system)."""
