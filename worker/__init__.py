"""The Celery worker: turns job and upload rows into calls of ``core``.

Postgres (or SQLite in embedded mode) is the truth; the broker only carries ids.
``celery_app`` builds the app from Settings, ``tasks`` holds the thin task
wrappers, ``job_runner`` and ``validation`` do the work, ``recovery`` re-enqueues
jobs whose worker died.
"""
