"""FastAPI prediction server."""
