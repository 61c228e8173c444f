"""What the API and the workers share: settings, the database layer, the storage layout and the
stable error codes clients see. Imports neither FastAPI nor torch, so both images can load it."""
