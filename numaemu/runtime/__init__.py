"""Node processes: the node shell, the supervisor, recovery and faults."""
