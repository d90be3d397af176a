"""The autocompress service: settings, database layer, artifact storage, HTTP API and CLI.

`workers/` may import the database layer (`service.db`, `service.settings`, `service.storage`),
never the HTTP layer (`service.api`).
"""
