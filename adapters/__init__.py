"""Adapters: the only code that talks to MLflow, the Prefect API and the SQL stores."""
