"""The autocompress client: a Python class over the public HTTP API, and the CLI verbs on it.

It talks HTTP only and imports nothing of the server (`service`, `workers`, `operators`,
`search`), so it can be installed and used on any machine that reaches the API.

    from client import Client, ApiError
    api = Client()            # AUTOCOMPRESS_URL, AUTOCOMPRESS_API_KEY
    job = api.submit("job.json")
    final = api.wait(job["id"])
"""

from client.api import ApiError, Client
from client.sse import Event, parse_events

__all__ = ["ApiError", "Client", "Event", "parse_events"]
