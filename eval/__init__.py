"""Evaluation: attribute prediction (R²) and retrieval (percentile ranks), their reports and baselines."""
