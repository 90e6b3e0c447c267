"""The benchmarks of issue 8: cachemgr's costs side by side with Redis, Celery, du and Flask."""
