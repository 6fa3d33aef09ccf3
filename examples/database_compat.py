"""Streaming rows from a database, with ssesup.compat: the generator opens its own connection (one
from a dependency would be closed before the stream starts) and closes it in ``finally``.

    python -c "import database; database.create(database.PATH)"   # in examples/
    uvicorn database_compat:app --app-dir examples   # then: curl -N http://127.0.0.1:8000/items
"""

import sqlite3

import anyio
import database
from starlette.applications import Starlette
from starlette.routing import Route

from ssesup.compat import EventSourceResponse


async def items(request):
    async def rows():
        db = sqlite3.connect(database.PATH, check_same_thread=False)
        try:
            last_id = 0
            while page := await anyio.to_thread.run_sync(database.page_after, db, last_id):
                for last_id, name in page:
                    yield dict(data=name, id=str(last_id))
        finally:
            db.close()

    return EventSourceResponse(rows())


app = Starlette(routes=[Route("/items", items)])
