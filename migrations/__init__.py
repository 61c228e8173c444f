"""Alembic migrations; shipped as a package so ``api.db.migrate`` finds them from any working directory."""
