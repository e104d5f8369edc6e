"""Prefect flows: training, promotion, monitoring."""
