"""Celery workers that run taming jobs (see worker/runner.py for the flow)."""
