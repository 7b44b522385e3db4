"""Benchmark harness tests: the optimised analysis against its reference, and the bench smoke run."""
