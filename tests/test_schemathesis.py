"""Property-based fuzzing of the API from its own OpenAPI document: no 5xx, no response that
breaks its schema (a few hundred cases, against the real Redis and worker)."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
)

from tests.conftest import make_tree

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def test_api_never_fails_or_breaks_its_schema(app, cache, root, canary):
    make_tree(root, "artist/album")
    cache.register("artist/album")
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case):  # type: ignore[no-untyped-def]
            nonlocal calls
            if case.query and "wait" in case.query:
                case.query["wait"] = 0  # enqueue, don't block the fuzzer on each task
            case.call_and_validate(checks=CHECKS)
            calls += 1

        check()
    assert calls >= 200
