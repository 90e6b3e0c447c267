"""Query-argument parsing for the API's blueprint."""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

import marshmallow as ma
from flask import Response
from flask_smorest import Blueprint
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from api.extensions import this_request

IMMUTABLE = (str, int, float, bool, type(None))


class QueryParser(FlaskParser):
    """webargs' Flask parser, except that an unknown query argument is refused (a 400 that
    names it: `?dryRun=true` must not run a real cleanup), and so is a repeated one (webargs
    took the first: `?dry_run=false&dry_run=true` ran a real cleanup), and that a request
    without a query string loads as its schema's defaults, worked out once per schema: most
    reads carry no arguments, and loading an empty query through marshmallow cost a seventh
    of a `GET /cache/stats`."""

    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": ma.RAISE,
        "querystring": ma.RAISE,
    }

    def __init__(self) -> None:
        super().__init__()
        # id -> (the schema, its defaults): the schema is kept, so that its id is never
        # another's (a schema made per request, freed, gave its id to the next: a KeyError).
        self._defaults: dict[int, tuple[ma.Schema, dict[str, Any]]] = {}

    def load_querystring(self, req: Any, schema: ma.Schema) -> Any:
        repeated = sorted(name for name, values in req.args.lists() if len(values) > 1)
        if repeated:
            # Raised here, inside webargs' parse: the 400 names each, as for any bad argument.
            raise ma.ValidationError({name: ["given more than once"] for name in repeated})
        sent = body_arguments(req)
        if sent:
            # `curl -d dry_run=true` ran a real cleanup: the body was never read.
            said = ", ".join(sent)
            raise ma.ValidationError({"body": [
                f"arguments are read from the query string only (?name=value), not the "
                f"body, which holds {said}"
            ]})  # fmt: skip
        return super().load_querystring(req, schema)

    def parse(self, argmap: Any, req: Any = None, **kwargs: Any) -> Any:
        plain = (
            kwargs.get("location") == "query"
            and not kwargs.get("validate")
            and isinstance(argmap, ma.Schema)
            and not this_request().query_string
            and not has_body(this_request())
        )
        if not plain:
            return super().parse(argmap, req, **kwargs)
        kept = self._defaults.get(id(argmap))
        if kept is not None and kept[0] is argmap:
            return dict(kept[1])
        # Raises, and caches nothing, when the schema requires an argument.
        found = super().parse(argmap, req, **kwargs)
        if all(isinstance(v, IMMUTABLE) for v in found.values()):
            # A list or dict default is the view's to change: it is made anew every time.
            self._defaults[id(argmap)] = (argmap, dict(found))
        return found


def has_body(req: Any) -> bool:
    return bool(req.content_length) or "Transfer-Encoding" in req.headers


def body_arguments(req: Any) -> list[str]:
    """What a request's body holds, named, where a client may have meant arguments: a form's
    or a JSON object's fields, or a body of another kind; nothing for none, or one that holds
    none (`{}`, `null`, blank, as some clients send with every POST, whatever its type)."""
    if not has_body(req):
        return []
    # Read first, kept: the form parser reads it from here (a multipart body it could not
    # parse, a wrong boundary, would otherwise be read as none), at most MAX_CONTENT_LENGTH.
    try:
        data = req.get_data(cache=True)
    except HTTPException:  # too large: its own 413
        raise
    except Exception as exc:  # the server's reader: a chunk size that is no number...
        why = f"could not be read: {type(exc).__name__}: {exc}"
        raise ma.ValidationError({"body": [why]}) from None
    if req.content_length is None and len(data) >= (req.max_content_length or len(data) + 1):
        # A chunked body is cut at the limit, not refused: what lies past it is unread.
        return [f"a body of {len(data)} bytes or more"]
    if req.mimetype == "multipart/form-data":
        names = [repr(name) for name in (*req.form.keys(), *req.files.keys())]
        if names:
            return names  # else not parsed (no boundary, a wrong one): read as it is
    raw = data.strip()
    if raw in NO_ARGUMENTS:
        return []
    try:
        data = json.loads(raw)
    except ValueError:
        data = NOT_JSON
    except RecursionError:  # `[[[[...` a few thousand deep: a 500 from any endpoint
        return ["a JSON body nested too deep to read"]
    if isinstance(data, dict):
        return [repr(name) for name in data]
    if data is not NOT_JSON:
        return ["a JSON body that is no object of arguments"]
    if req.mimetype == "application/x-www-form-urlencoded":
        names = [repr(name) for name, _ in parse_qsl(raw.decode(errors="replace"), True)]
        return names or ["a body"]
    return ["a body that is not JSON" if req.is_json else "a body"]


NO_ARGUMENTS = (b"", b"{}", b"null", b"[]", b'""')
NOT_JSON = object()


class CacheBlueprint(Blueprint):
    ARGUMENTS_PARSER = QueryParser()

    def lean(self, view: Callable[..., Any]) -> Callable[..., Any]:
        """A view that returns its own Response and takes one argument schema, run under one
        wrapper instead of the five that webargs and flask-smorest stack (each reads werkzeug
        proxies; together about a tenth of a `GET /cache/stats`). The arguments are parsed by
        this blueprint's parser, from the location and with the error status its OpenAPI doc
        names, and the doc (`_apidoc`, read when the blueprint is registered) stays as
        flask-smorest built it. Every decorator under it is skipped at run time: only
        `arguments` (location and error status alone), `response` (200) and `alt_response`
        may be there, which is checked here; its reply must be a Response, checked per call."""
        doc = view._apidoc  # type: ignore[attr-defined]
        func = inspect.unwrap(view)
        extra = set(doc) - LEAN_DOC
        if extra or doc.get("success_status_codes") != [200] or inspect.iscoroutinefunction(func):
            raise TypeError(
                f"{func.__qualname__}: lean() skips what it cannot run "
                f"({', '.join(sorted(extra)) or 'a status other than 200, or async'})"
            )
        (param,) = doc["arguments"]["parameters"]
        (status,) = doc["arguments"]["responses"]  # the status webargs gives a bad argument
        schema, location, parse = param["schema"], param["in"], self.ARGUMENTS_PARSER.parse

        @functools.wraps(func)
        def wrapper(view_self: Any, **kwargs: Any) -> Response:
            args = parse(schema, this_request(), location=location, error_status_code=status)
            reply = func(view_self, args, **kwargs)
            if not isinstance(reply, Response):  # flask-smorest would have dumped it
                raise TypeError(f"{func.__qualname__} must return a Response under lean()")
            return reply

        wrapper._apidoc = doc  # type: ignore[attr-defined]
        return wrapper


# What flask-smorest's `arguments`, `response` and `alt_response` leave in a view's doc.
LEAN_DOC = {"arguments", "response", "success_status_codes"}


def query(schema: type[ma.Schema]) -> dict[str, Any]:
    """The query arguments of a route outside the API's blueprint (the status page, /metrics,
    the probes), parsed as the blueprint's are: an unknown or repeated one is a 400 naming
    it. One instance per schema class, as the blueprint's decorators make once."""
    instance = _QUERY_SCHEMAS.get(schema)
    if instance is None:
        instance = _QUERY_SCHEMAS.setdefault(schema, schema())
    parsed: dict[str, Any] = CacheBlueprint.ARGUMENTS_PARSER.parse(
        instance, location="query", error_status_code=400
    )
    return parsed


_QUERY_SCHEMAS: dict[type[ma.Schema], ma.Schema] = {}
