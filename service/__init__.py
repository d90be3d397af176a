"""The autocompress service, in layers that import only downward:

- `service.cli`, `service.demo`  the command line and the demo (top level).
- `service.main`                 the composition root: wires `workers/` into the API.
- `service.api`                  the HTTP API; reaches the workers only through a `Dispatcher`.
- `workers/`                     (a package of its own) advancing jobs, evaluating trials.
- `service.core`                 settings, database, repository, artifact store, dataset
                                 references, the dispatcher protocol, API keys.

`service.core` is below both the API and the workers; `service.api` never imports `workers`.
"""
