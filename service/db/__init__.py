"""Database layer: SQLAlchemy 2 models, session factory, migrations entry point, crud modules.

Imports nothing from FastAPI so the worker can use it without the web stack.
"""
