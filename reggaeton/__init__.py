"""Shared domain of the reggaeton classifier: feature schema, settings, data, model pipelines, metrics."""
