"""Celery adapters over the cachemgr core: the app, the tasks, and the pipeline client."""
