"""The `sql` example's environment: every trajectory gets its own in-memory SQLite database, built from
the row's `db_seed` column, and one tool, `query`, that runs SQL on it.

The database is per trajectory, so a statement that changes it (INSERT, UPDATE, CREATE TABLE) affects that
trajectory only; APPO's branches continue from a copy of their parent's database at the split point
(`fork`, SQLite's backup API). The model's SQL runs in this (the trainer's) process, so the connection is
locked down: no ATTACH (which would create files), no extension loading, and a statement that runs for
more than a budget of SQLite VM steps is stopped.
"""

from __future__ import annotations

import random
import sqlite3

DEPARTMENTS = ("Sales", "Research", "Support", "Legal", "Design")
CITIES = ("Oslo", "Lima", "Kyoto", "Perth", "Quito")
FIRST = ("Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu", "Max", "Ned", "Oda",
         "Pia", "Rex", "Sam", "Tia", "Uma", "Vic", "Wes", "Xia", "Yan", "Zed")
SCHEMA = "employees(id INTEGER, name TEXT, dept TEXT, city TEXT, salary INTEGER)"
MAX_ROWS_SHOWN = 8
MAX_VM_STEPS = 200_000


def build_database(seed: int) -> sqlite3.Connection:
    """The row's database: 8 to 14 employees drawn from `seed` (the same seed always gives the same data)."""
    rng = random.Random(seed)
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute(f"CREATE TABLE {SCHEMA}")
    names = rng.sample(FIRST, rng.randint(8, 14))
    conn.executemany("INSERT INTO employees VALUES (?, ?, ?, ?, ?)",
                     [(i + 1, name, rng.choice(DEPARTMENTS), rng.choice(CITIES), 10 * rng.randint(30, 120))
                      for i, name in enumerate(names)])
    conn.commit()
    return conn


def _deny_attach(action, *_args):
    return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_ATTACH else sqlite3.SQLITE_OK


def _lock_down(conn: sqlite3.Connection) -> sqlite3.Connection:
    conn.set_authorizer(_deny_attach)
    conn.set_progress_handler(lambda: 1, MAX_VM_STEPS)  # non-zero: abort the statement
    return conn


def run_sql(conn: sqlite3.Connection, sql: str) -> str:
    """The text the model sees for one statement: its rows (first MAX_ROWS_SHOWN), or the error."""
    try:
        cursor = conn.execute(sql)
        rows = cursor.fetchmany(MAX_ROWS_SHOWN + 1)
        conn.commit()
    except sqlite3.Error as e:
        return f"SQL error: {e}"
    except ValueError as e:  # e.g. several statements at once
        return f"SQL error: {e}"
    if cursor.description is None:
        return f"OK, {cursor.rowcount} row(s) changed"
    lines = [" | ".join(str(v) for v in row) for row in rows[:MAX_ROWS_SHOWN]]
    if len(rows) > MAX_ROWS_SHOWN:
        lines.append("... (more rows)")
    return "\n".join(lines) if lines else "(no rows)"


class SqlDatabase:
    """One SQLite database per trajectory; its only tool is `query`."""

    tools = ("query",)

    def setup(self, db_seed: int) -> None:
        self.conn = _lock_down(build_database(db_seed))

    def query(self, sql: str) -> str:
        """Run one SQL statement on the employees table and return its rows.

        Args:
            sql: a single SQLite statement, e.g. SELECT name FROM employees WHERE dept = 'Sales'
        """
        return run_sql(self.conn, sql)

    def fork(self) -> SqlDatabase:
        twin = SqlDatabase()
        twin.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.backup(twin.conn)
        _lock_down(twin.conn)
        return twin

    def close(self) -> None:
        self.conn.close()
