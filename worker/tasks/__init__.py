"""Celery tasks: thin wrappers with dotted names around ``worker.job_runner`` and ``worker.validation``."""
