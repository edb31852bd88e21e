"""The public Python API for emulation scripts: validated configurations, `Emulation`, `bench`, `calibrate`."""
