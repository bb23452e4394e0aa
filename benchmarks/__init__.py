"""Benchmarks that print and record figures with the machine they ran on (results/)."""
