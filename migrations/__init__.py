"""Alembic migrations, shipped as a package so ``service.db.migrate`` finds them from any directory."""
