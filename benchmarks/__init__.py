"""Performance measurements of sclora, one command each (`python -m benchmarks.<name> [--device cuda]`).

Every figure is a ratio against a baseline measured in the same run (the machines are shared and noisy);
each command writes benchmarks/results/<name>.json (benchmarks/results/gpu/ on CUDA) through `record.py`.
"""
