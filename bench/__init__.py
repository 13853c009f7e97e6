"""Benchmark harness and suites; imports everything, imported by nothing (installed as fastssl.bench)."""
