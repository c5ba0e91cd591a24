"""The node's web view: a read-only HTTP server over the time-series store and the agent.

    server.py   the HTTP server: GET only, static pages, /api/* answers (API.md is the contract)
    pages.py    one function per /api endpoint: parameters in, JSON shape out (no SQL)
    data.py     every SQL statement the UI runs: the store opened read-only, and the rollup
                cache (the UI's own SQLite file) that keeps pages fast over millions of events
    live.py     the instances page: the agent's state, in-process or over its control socket
    static/     the built pages (scripts/build-ui; ui/ holds their sources)

Errors a page can show are ``UiError``: an HTTP status, what went wrong naming the object, and
the fix; the server turns them into ``{"error", "fix", "status"}`` and never a traceback.
"""

from __future__ import annotations


class UiError(Exception):
    """A request the UI cannot answer: ``status`` (400 malformed, 404 unknown, 503 the store or
    the agent is missing or broken), ``message`` naming the object, ``fix`` what to do."""

    def __init__(self, status: int, message: str, fix: str = "", **extra: object) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fix = fix
        self.extra = extra

    def body(self) -> dict[str, object]:
        """The JSON error shape of API.md."""
        return {"error": self.message, "fix": self.fix, "status": self.status, **self.extra}
