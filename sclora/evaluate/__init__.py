"""Evaluation: utility, world knowledge, safety and forgetting."""
