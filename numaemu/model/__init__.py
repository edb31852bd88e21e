"""Pure model: no OS calls, no processes, no clocks."""
