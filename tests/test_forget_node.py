"""Forgetting a node taken out of service: it leaves the stats, metrics and alerts; its books
stay; a node that is up, whose workers would publish it again, is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cachemgr import DiskCache, NotTracked
from cachemgr.errors import NodeAlive
from tests.conftest import make_tree
from tests.test_operability import app_for, metrics_of


@pytest.fixture
def nodes(settings, redis_client, tmp_path, prefix) -> dict[str, Any]:
    """Node a is up, node b is down; both track a directory."""
    made = {}
    for name in ("a", "b"):
        root = tmp_path / f"r{name}"
        root.mkdir()
        s = settings.with_(
            disk_cache_node=name,
            disk_cache_key_prefix=f"{prefix}{name}:",
            disk_cache_root=str(root),
        )
        cache = DiskCache(s, redis_client)
        cache.registry.publish(s)
        make_tree(root, "x")
        cache.register("x")
        made[name] = cache
    made["a"].registry.heartbeat(made["a"].keys)
    return made


def names(client: Any) -> list[str]:
    return [n["node"] for n in client.get("/cache/stats").get_json()["nodes"]]


def test_a_down_node_is_forgotten_and_its_books_stay(nodes):
    a, b = nodes["a"], nodes["b"]
    b.publish_config()
    assert a.registry.forget("b") == {"node": "b", "forgotten": True}
    # Its published TTL went with it: one directory's read went by the forgotten workers'
    # TTL while `ls` went by this process's.
    assert not b.client.exists(b.keys.config)
    assert "b" not in a.registry.entries()
    assert b.store.info("x") is not None  # its books are untouched
    with pytest.raises(NotTracked, match="unknown node 'b'"):
        a.registry.forget("b")
    with pytest.raises(NotTracked, match=r"or it was forgotten .*known nodes: 'a'$"):
        a.for_node("b")


def test_a_node_that_is_up_is_refused(nodes):
    with pytest.raises(NodeAlive, match="stop its workers first"):
        nodes["b"].registry.forget("a")
    assert "a" in nodes["b"].registry.entries()


def test_an_older_entry_of_live_books_can_go(settings, redis_client, root, prefix):
    """An unnamed node's workers publish under their host name: a new container leaves the
    old name behind, with the same books, which are alive under the new one."""
    cache = DiskCache(settings, redis_client)
    registry = cache.registry
    for host, at in (("old-host", 100.0), ("new-host", 200.0)):
        entry = json.loads(json.dumps({"node": host, "root": str(root), "key_prefix": prefix}))
        entry.update(published_at=at, named=False)
        redis_client.hset(registry.nodes_key, host, json.dumps(entry))
    registry.heartbeat(cache.keys)
    cache.client.hset(cache.keys.config, "ttl_seconds", 100)  # what new-host's workers publish
    assert registry.forget("old-host")["forgotten"] is True
    assert cache.client.exists(cache.keys.config)  # the live books' config stays
    with pytest.raises(NodeAlive):
        registry.forget("new-host")  # the live one
    assert list(registry.entries()) == ["new-host"]


def test_the_api_forgets_a_down_node(nodes, redis_client):
    client = app_for(nodes["a"].settings, redis_client).test_client()
    assert sorted(names(client)) == ["a", "b"]
    assert any("node=b" in k for k in metrics_of(client))
    # An unknown argument is a 400 naming it: `?dry_run=true` forgot the node.
    r = client.delete("/cache/nodes/b?dry_run=true")
    assert r.status_code == 400 and "dry_run" in r.get_data(as_text=True), r.get_data(True)
    assert sorted(names(client)) == ["a", "b"]
    r = client.delete("/cache/nodes/b")
    assert r.status_code == 200 and r.get_json() == {"node": "b", "forgotten": True}
    assert names(client) == ["a"]
    assert not any("node=b" in k for k in metrics_of(client))  # CacheWorkerDown stops firing
    r = client.delete("/cache/nodes/b")
    assert r.status_code == 404 and r.get_json()["code"] == "unknown_node"  # not a directory's
    r = client.delete("/cache/nodes/a")
    assert r.status_code == 409 and r.get_json()["code"] == "node_alive"
    assert "stop its workers first" in r.get_json()["message"]


def test_forgetting_needs_the_token_when_one_is_set(nodes, redis_client):
    from api import create_app

    app = create_app(
        {
            "TESTING": True,
            "CACHEMGR_SETTINGS": nodes["a"].settings,
            "REDIS_CLIENT": redis_client,
            "DISK_CACHE_API_TOKEN": "s3cret",
        }
    )
    client = app.test_client()
    assert client.delete("/cache/nodes/b").status_code == 401
    assert "b" in nodes["a"].registry.entries()
    r = client.delete("/cache/nodes/b", headers={"Authorization": "Bearer s3cret"})
    assert r.status_code == 200


def test_the_cli_forgets_and_says_why_not(nodes, redis_client):
    runner = app_for(nodes["a"].settings, redis_client).test_cli_runner()
    r = runner.invoke(args=["forget-node", "b", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) == {"node": "b", "forgotten": True}
    r = runner.invoke(args=["forget-node", "b"])
    assert r.exit_code == 3 and "unknown node 'b'" in r.output
    r = runner.invoke(args=["forget-node", "a"])
    assert r.exit_code == 1 and "is up" in r.output and "Traceback" not in r.output
    for bad in ("", "a b"):  # no name a node can have: a usage error, as the API's 400
        r = runner.invoke(args=["forget-node", bad])
        assert r.exit_code == 2 and "a node's name: 1 to 100 of letters" in r.output, r.output
