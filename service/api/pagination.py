"""Pagination of list endpoints, in one place: `?limit=` and an opaque `?cursor=`.

A page is a list (the body stays a JSON array); when more rows follow, the response carries
the cursor of the next page in the `X-Next-Cursor` header (and a `Link: <...>; rel="next"`).
The cursor is the id of the last row of the page, so walking pages never repeats or skips a
row, even while new rows are being written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Query, Request, Response
from sqlalchemy import Select
from sqlalchemy.orm import Session

from service.api.errors import Invalid
from service.core.db import parse_row_id

MAX_LIMIT = 500
NEXT_CURSOR_HEADER = "X-Next-Cursor"


@dataclass(frozen=True)
class Page:
    """What the client asked for: at most `limit` rows after `cursor`."""

    limit: int
    after_id: int | None


def page_params(default: int = 50) -> Callable[..., Page]:
    """A FastAPI dependency reading `limit` (1..MAX_LIMIT, `default` when absent) and `cursor`."""

    def dependency(
        limit: Annotated[
            int, Query(ge=1, le=MAX_LIMIT, description="Rows per page (1..500).")
        ] = default,
        cursor: Annotated[
            str | None,
            Query(description="The `X-Next-Cursor` of the previous page; absent: the first page."),
        ] = None,
    ) -> Page:
        after_id = parse_row_id(cursor) if cursor is not None else None
        if cursor is not None and after_id is None:
            raise Invalid("query.cursor", "not a cursor this server gave (X-Next-Cursor)")
        return Page(limit=limit, after_id=after_id)

    return dependency


def paginate(
    session: Session,
    query: Select,
    id_column: Any,
    page: Page,
    request: Request,
    response: Response,
    *,
    newest_first: bool = True,
) -> list[Any]:
    """One page of `query`'s rows ordered by `id_column`, and the next cursor in the headers."""
    if page.after_id is not None:
        query = query.where(id_column < page.after_id if newest_first else id_column > page.after_id)
    order = id_column.desc() if newest_first else id_column.asc()
    rows = list(session.scalars(query.order_by(order).limit(page.limit + 1)))
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        cursor = str(rows[-1].id)
        response.headers[NEXT_CURSOR_HEADER] = cursor
        response.headers["Link"] = f'<{request.url.include_query_params(cursor=cursor)}>; rel="next"'
    return rows
