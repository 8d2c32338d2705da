"""Workers: the claim-and-run path shared by the Celery and local executors."""
