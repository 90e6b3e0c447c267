"""gunicorn's own answers to requests it cannot parse (a request line past its limit, a bad
header) in the API's JSON error shape: it wrote an HTML page, the one answer of the API a
client could not read as JSON."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from gunicorn import util


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's contract (called as it is), with a JSON body."""
    if status_int == HTTPStatus.NOT_IMPLEMENTED:  # gunicorn's reason for it: "Bad Request"
        reason = HTTPStatus.NOT_IMPLEMENTED.phrase
    code = reason.lower().replace(" ", "_")
    payload = json.dumps({"status": status_int, "code": code, "message": mesg or reason})
    data = payload.encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin1") + data)


def install() -> None:
    """In each gunicorn worker: its error path looks write_error up in gunicorn.util."""
    util.write_error = write_json_error
