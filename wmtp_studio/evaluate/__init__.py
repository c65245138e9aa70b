"""Evaluation: run model-written programs in a sandbox and judge them (pass@k, benchmarks, decoding)."""
