"""The database examples' data, shared by database_compat.py and database_native.py: a SQLite table of
items, read a page at a time. Nothing here is about SSE."""

import sqlite3

PATH = "examples.db"


def create(path: str, count: int = 20) -> None:
    """A fresh table of ``count`` items."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS items")
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        db.executemany("INSERT INTO items (name) VALUES (?)", [(f"item {i}",) for i in range(1, count + 1)])
    db.close()


def page_after(db: sqlite3.Connection, last_id: int, size: int = 5) -> list[tuple[int, str]]:
    return db.execute("SELECT id, name FROM items WHERE id > ? ORDER BY id LIMIT ?", (last_id, size)).fetchall()
