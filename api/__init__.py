"""The REST API: a thin Flask app over cachemgr (reads) and the Celery tasks (writes)."""

from __future__ import annotations

import base64
import functools
import hmac
import ipaddress
import logging
import os
import threading
from collections.abc import Callable
from inspect import iscoroutinefunction
from typing import Any
from urllib.parse import urlsplit

import swagger_ui_bundle
from flask import Flask, jsonify, request, send_from_directory
from flask_smorest import Api
from marshmallow import Schema
from werkzeug.routing import PathConverter

from api.arguments import query
from api.errors import body, register_error_handlers
from api.extensions import CacheExtension, state
from api.schemas import ApiErrorSchema, NodeArgs
from cachemgr.environment import api_token, log_level
from cachemgr.health import readiness
from cachemgr.logs import configure_logging
from cachemgr.settings import SettingsError, parse_bool

log = logging.getLogger("cachemgr.api")

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class CacheFlask(Flask):
    """Flask that remembers which of its functions are plain `def`s: it asked each time, eight
    times a `GET /cache/stats` (view, flask-smorest's wrappers, hooks), a tenth of its Python."""

    MAX_REMEMBERED = 1000  # a function made anew per call is asked about, not remembered

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plain: dict[Any, bool] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        owner = getattr(func, "__func__", func)  # a view's bound method is made per request
        plain = self._plain.get(owner)
        if plain is None:
            plain = not iscoroutinefunction(func)
            if len(self._plain) < self.MAX_REMEMBERED:
                self._plain[owner] = plain
        return func if plain else self.async_to_sync(func)


class CacheApi(Api):
    ERROR_SCHEMA = ApiErrorSchema  # our error body: {status, code, message, errors}


def api_settings(serving: bool = True) -> dict[str, Any]:
    """The API's own settings from the environment, checked like cachemgr's: a READ_AUTH of
    `maybe` silently meant false, reads open to all. `serving` False (the CLI, which checks
    no token): a READ_AUTH without a token stops nothing."""
    raw = os.environ.get("DISK_CACHE_API_READ_AUTH") or "false"
    try:
        read_auth = parse_bool(raw)
    except ValueError as exc:
        raise SettingsError(f"DISK_CACHE_API_READ_AUTH={raw!r}: {exc}") from None
    token = api_token() if serving else os.environ.get("DISK_CACHE_API_TOKEN", "")
    if read_auth and not token and serving:  # asked for, and silently off: reads open to all
        raise SettingsError(
            f"DISK_CACHE_API_READ_AUTH={raw!r} needs DISK_CACHE_API_TOKEN: without a token no "
            "read can be checked; set one (or set DISK_CACHE_API_READ_AUTH=false)"
        )
    hosts = [h.strip().lower() for h in os.environ.get("DISK_CACHE_API_HOSTS", "").split(",")]
    return {
        "DISK_CACHE_API_TOKEN": token,
        "DISK_CACHE_API_READ_AUTH": read_auth,
        "DISK_CACHE_API_HOSTS": [h for h in hosts if h],
    }


class AnyPath(PathConverter):
    """Werkzeug's `path`, newlines included: a directory may be named with one, and
    `/cache/directories/a%0Ab` answered Flask's own 404 for a tracked `a\nb`."""

    regex = "[^/](?s:.*?)"


BODY_LIMIT = 64 * 1024


def create_app(config: dict[str, Any] | None = None) -> Flask:
    configure_logging(level=log_level())
    app = CacheFlask(__name__)
    # `/cache/directories//etc` must be refused (api/errors.py: a 400, absolute path), not be
    # merged into `/cache/directories/etc` by a 308 that a client following redirects obeys.
    app.url_map.merge_slashes = False
    app.url_map.converters["path"] = AnyPath
    app.config.update(
        API_TITLE="cachemgr",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        # Swagger UI's Authorize sends the token only to operations that name a scheme; {}:
        # none, as reads without DISK_CACHE_API_READ_AUTH and every call without a token.
        API_SPEC_OPTIONS={"security": [{"bearer": []}, {"basic": []}, {}]},
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="/swagger-ui/",  # served below: no outside network
        **api_settings(serving=not (config or {}).get("CACHEMGR_CLI")),
        CELERY_BROKER_URL=None,
        CELERY_RESULT_BACKEND=None,
        # No route takes a body; one is read only to name what it holds (a 400): a 1 GB one
        # held 1 GB of the web process, or of /tmp as an upload. Past this, a 413.
        MAX_CONTENT_LENGTH=BODY_LIMIT,
        # The status page's link: where the Procfile's (or `up --flower`'s) Flower listens.
        FLOWER_URL=os.environ.get("FLOWER_URL")
        or f"http://127.0.0.1:{os.environ.get('FLOWER_PORT') or 5555}",
    )
    if config:
        app.config.update(config)
    CacheExtension(app)
    api = CacheApi(app)
    api.spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    api.spec.components.security_scheme("basic", {"type": "http", "scheme": "basic"})
    from api.routes import blp, empty_path

    api.register_blueprint(blp)
    # On the app, not the documented blueprint: these are errors, not endpoints.
    empty = {
        "/cache/register": ["POST"],  # werkzeug sent it on to the rule below with a 308
        "/cache/register/": ["POST"],
        "/cache/directories/": ["DELETE"],
        "/cache/directories": ["DELETE"],  # an HTML 308 to the rule above, Location from Host
    }
    for rule, methods in empty.items():
        app.add_url_rule(rule, f"empty_path:{rule}", empty_path, methods=methods)
    # The listing with a trailing slash, as a shell completes it: it was a 400 "empty path".
    listing = app.view_functions[f"{blp.name}.Directories"]
    app.add_url_rule("/cache/directories/", "directories_slash", listing, methods=["GET"])
    from api import metrics, status

    app.register_blueprint(metrics.bp)
    app.register_blueprint(status.bp)
    register_error_handlers(app)
    from api.cli import COMMANDS

    for command in COMMANDS:
        app.cli.add_command(command)
    _browsers(app)
    _auth(app)
    _health(app)

    @app.get("/swagger-ui/<path:filename>")
    def swagger_assets(filename: str) -> Any:
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    return app


def _presented_token(header: str) -> str:
    """The token from `Bearer <token>`, or the password of HTTP Basic (what a browser sends)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return ""
    return ""


PROBES = ("/healthz", "/readyz")


def _browsers(app: Flask) -> None:
    """Another site's page may send a write that needs no preflight (a form's POST, a no-cors
    fetch): with no token, a loopback API did it (stop-scheduler: the disk then fills), and
    with one, a browser sent its cached Basic password along. Refused when the browser says
    the request comes from another origin. And a loopback API (no token) answers only to a
    loopback Host or one of DISK_CACHE_API_HOSTS: another name resolving to 127.0.0.1 (DNS
    rebinding) made another site's page same-origin with it."""

    app.after_request(_framed_by_none)

    @app.before_request
    def same_origin() -> Any:
        if request.path in PROBES:
            return None
        sent = _host_sent(request)
        host, loopback = _host_of(sent)
        if sent and not host:
            return body(400, "bad_host", f"Host {sent[:100]!r} is no host name and port")
        hosts = app.config.get("DISK_CACHE_API_HOSTS", ())
        if not app.config["DISK_CACHE_API_TOKEN"] and not loopback and host not in hosts:
            return body(403, "host_not_allowed", (
                f"Host {sent[:100]!r} is not this loopback API's name (localhost, 127.0.0.1, "
                "[::1]): another name resolving here lets another site's page in; add it to "
                "DISK_CACHE_API_HOSTS if it is yours (a proxy's)"
            ))  # fmt: skip
        if request.method in WRITE_METHODS and _from_elsewhere(request, hosts):
            origin = request.headers.get("Origin") or request.headers.get("Sec-Fetch-Site")
            return body(403, "cross_origin", (
                f"a write sent by a page of another origin ({origin}) is refused: another "
                "site must not steer the cache; send it from a script, curl or this API's "
                "own pages"
            ))  # fmt: skip
        return None


def _framed_by_none(response: Any) -> Any:
    """No page of another site may frame the status page or /docs (whose buttons write), nor
    a browser take a reply for another type than it says."""
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def _from_elsewhere(req: Any, hosts: Any = ()) -> bool:
    """What the browser says of a request's origin: Sec-Fetch-Site where it sends one (it
    knows, behind any proxy), else an Origin that is not the request's Host (default ports
    as none), nor one of `hosts` (DISK_CACHE_API_HOSTS: a proxy that rewrites the Host)."""
    site = req.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("cross-site", "same-site")
    origin = req.headers.get("Origin")
    if not origin:
        return False
    try:
        theirs = urlsplit(origin.lower())
        if (theirs.hostname or "") in hosts:
            return False
        default = {"http": 80, "https": 443}.get(theirs.scheme)
        mine = urlsplit(f"//{_host_sent(req).lower()}")
        return (theirs.hostname, theirs.port or default) != (mine.hostname, mine.port or default)
    except ValueError:  # a port that is no number, a bracket left open: no page sent that
        return True


def _host_sent(req: Any) -> str:
    """The Host header as sent (werkzeug reads one it cannot parse, a Docker service's
    `cache_api` with its underscore, as ''), or werkzeug's server name when none was sent
    (HTTP/1.0)."""
    return str(req.headers.get("Host") or req.host)


@functools.lru_cache(maxsize=256)  # on every request: a few Host values, parsed once each
def _host_of(raw: str) -> tuple[str, bool]:
    """A Host header's name (lower case, no port, no trailing dot), and whether it is
    loopback's; no name for one that is no host and port (`localhost:abc`, `a@localhost`)."""
    try:
        parts = urlsplit(f"//{raw}")
        port = parts.port  # raises ValueError on a port that is no number
    except ValueError:  # a bracket left open ("[::1"): no name, loopback's least of all
        return "", False
    name = parts.hostname or ""
    # Nothing but a name and a port: `a@localhost`, `localhost/x`, `[::1]x` are none.
    rebuilt = (f"[{name}]" if ":" in name else name) + ("" if port is None else f":{port}")
    if rebuilt != parts.netloc.lower() or parts.path or parts.query or parts.fragment:
        return "", False
    host = name.removesuffix(".")
    return host, _loopback(host)


def _loopback(host: str) -> bool:
    """By the address, not the name's text: `127.x.attacker.example` rebinds as well."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _auth(app: Flask) -> None:
    """With DISK_CACHE_API_TOKEN set, writes (and reads, if asked) need the token: as a bearer
    token, or as the password of HTTP Basic so that a browser can open the status page."""

    @app.before_request
    def check_token() -> Any:
        token = app.config["DISK_CACHE_API_TOKEN"]
        if not token or request.path in ("/healthz", "/readyz"):
            return None
        if request.method not in WRITE_METHODS and not app.config["DISK_CACHE_API_READ_AUTH"]:
            return None
        given = _presented_token(request.headers.get("Authorization", ""))
        if not hmac.compare_digest(given.encode(), token.encode()):
            response, status = body(401, "unauthorized", "missing or wrong bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="cachemgr", Basic realm="cachemgr"'
            return response, status
        return None


# How long /readyz waits for the broker: a hung one (stopped, still accepting connections) was
# waited on until gunicorn killed the request at 30 s, an HTML 500 for every probe.
BROKER_WAIT_SECONDS = 3.0


def _broker_answers(celery_app: Any) -> str:
    """"ok", or why not, within BROKER_WAIT_SECONDS: the check runs in a thread of its own,
    left to finish (daemon) when the broker does not answer."""
    said: list[str] = []

    def check() -> None:
        try:
            with celery_app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
                if conn.transport.driver_type == "redis":  # a pooled connection: ask it
                    conn.default_channel.client.ping()
            said.append("ok")
        except Exception as exc:
            said.append(f"unreachable: {exc}")

    worker = threading.Thread(target=check, name="readyz-broker", daemon=True)
    worker.start()
    worker.join(BROKER_WAIT_SECONDS)
    return said[0] if said else f"no answer within {BROKER_WAIT_SECONDS:.0f} s"


def _health(app: Flask) -> None:
    @app.get("/healthz")
    def healthz() -> Any:
        """The process is up."""
        query(Schema)  # none taken: `?node=` is /readyz's
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> Any:
        """Redis and the broker answer, the root exists, management is enabled; the API's own
        node, or `?node=`'s."""
        st = state()
        checks = readiness(st.cache.for_node(query(NodeArgs)["node"]))
        if st.tasks.broker_on_books_server and checks["redis"] != "ok":
            # The same server: asked again, a hung one cost a probe 3 s more, and one that
            # refuses writes (a full Redis) answered "ok" while it refused every task.
            checks["broker"] = f"the books' Redis server: {checks['redis']}"
        else:
            checks["broker"] = _broker_answers(st.tasks.app)
        ready = all(v == "ok" for v in checks.values())
        return jsonify({"status": "ok" if ready else "unavailable", "checks": checks}), (
            200 if ready else 503
        )
