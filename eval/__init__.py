"""Offline evaluation: datasets, metrics, suites and reports."""
