"""Workers: evaluating trials and advancing jobs, with Celery (distributed) or in-process threads.

Modules, each importing only those above it in this list and `service.core` below them all:

- `device.py`        which device a worker process computes on (CUDA when it has one).
- `trial.py`         the computation of one trial and of a job's baseline (uses `operators/`).
- `jobs.py`          advance_job and evaluate_trial: the logic, written once for both modes.
- `sweeper.py`       re-queues trials whose lease expired, nudges idle jobs.
- `celery_config.py` the Celery configuration and task names (no side effects on import).
- `dispatch.py`      the concrete dispatchers: Celery messages or in-process threads.
- `celery_app.py`    the Celery app and its tasks, for `autocompress worker`.

The database row is the truth and messages are hints: every entry point is idempotent. The
SQL that moves jobs and trials is `service.core.repository`; `service.api` never imports this
package (the composition root `service.main` wires a dispatcher from here into the API).
"""
