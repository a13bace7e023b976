"""Inputs for tests and benchmarks: random-weight GPTQ checkpoints with Qwen shapes, the real Qwen tokenizer offline.

Imported by tests and bench.py only, never by the app.
"""
