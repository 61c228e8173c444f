"""Every DB query of the service lives in these modules; routes and tasks call them, never SQL.

``job_runs`` (the worker's side of a job: lease, heartbeat, progress, events, metrics, artifacts) is
kept apart from ``jobs`` (the API's side: create, read, list, cancel, delete).
"""
