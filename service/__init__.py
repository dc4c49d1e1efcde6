"""The inference microservice (FastAPI). Built in its own issue."""
