"""Benchmark harness behind ``fastmtl bench``."""
