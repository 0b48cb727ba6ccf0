"""Scaling laws: sweeps of training runs (plan, sweep, table), fits (fit) and plots (plots)."""
