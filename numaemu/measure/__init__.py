"""Measurement: calibrate, bench, statistics, plots, the cluster."""
