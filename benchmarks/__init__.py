"""Benchmarks of cogseg_ml: run ``python -m benchmarks [name ...]`` (or ``make bench``)."""
