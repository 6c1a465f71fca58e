"""`celery -A worker.beat beat`: a beat process that rings the sweeper (`taming.sweep`) on schedule.

Run exactly one per deployment. Importing this module configures the app from the environment.
"""

from worker.celery_app import configure_worker

app = configure_worker()
