"""The operating system: CPUs, sysfs, shared memory, clocks, files."""
