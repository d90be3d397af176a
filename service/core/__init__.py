"""What the API and the workers both need, below both of them.

- `settings.py`   the `AUTOCOMPRESS_*` settings.
- `db.py`         tables, engines, sessions, the database clock, Alembic upgrade/check.
- `repository.py` every compare-and-set of jobs and trials (claims, leases, results, sweeps,
                  job state transitions), each in the caller's transaction unless it says so.
- `storage.py`    the artifact store (staged writes, paths kept inside the root).
- `datasets.py`   dataset references, including `upload:<id>`.
- `dispatch.py`   the `Dispatcher` protocol: how follow-up work is asked for.
- `auth.py`       API keys, stored as an HMAC.

Nothing here imports `service.api`, `workers`, FastAPI or Celery.
"""
