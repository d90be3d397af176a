"""Workers: evaluating trials and advancing jobs, with Celery (distributed) or in-process threads.

- `jobs.py`      advance_job, evaluate_trial and the sweeper: the logic, written once.
- `trial.py`     the computation of one trial and of a job's baseline (uses `operators/`).
- `dispatch.py`  how follow-up work is enqueued: Celery messages or in-process threads.
- `celery_app.py` the Celery app and its tasks, for `autocompress worker`.
- `device.py`    which device a worker process computes on (CUDA when it has one).

The database row is the truth and messages are hints: every entry point is idempotent.
"""
