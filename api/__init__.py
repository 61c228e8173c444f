"""The HTTP side of ruc-service: FastAPI app, settings, database layer. Never imports torch."""
