"""
Idempotency keys shared by two nodes through a real redis-server: a key
publishes once across nodes, also when both nodes get it at the same moment.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from sse_twisted import SSEBroker
from sse_twisted.event import Item
from sse_twisted.idempotency import KeyConflict, RedisIdempotency
from sse_twisted.publishing import Published, maybe_deferred

from ..support.redis_server import Node, RedisServer, global_reactor, wait_until

pytestmark = pytest.mark.redis


def broker_on(node: Node) -> SSEBroker:
    """A broker publishing through the node's (started) bus, its keys in that Redis."""
    return SSEBroker(
        relay=node.bus,
        heartbeat=0,
        reactor=global_reactor(),
        idempotency=RedisIdempotency(node.bus, 60),
    )


async def publish(broker: SSEBroker, *items: Item) -> list[Published]:
    return await maybe_deferred(broker.publish_items(list(items))).addTimeout(10, global_reactor())


async def settled(*brokers: SSEBroker) -> None:
    """Publish a marker and wait until every broker dispatched it: all before it is in."""
    marker = (await publish(brokers[0], Item.create("marker", data=0)))[0].id

    def seen() -> bool:
        return all(
            b.history is not None and b.history.since(marker, None, 1) is not None for b in brokers
        )

    await wait_until(seen, 10, "the marker on every node")


@pytest_twisted.ensureDeferred
async def test_key_on_node_a_then_node_b_publishes_once(
    redis_server: RedisServer, nodes: Any
) -> None:
    """
    The same key posted to node A then node B is published once: B answers
    duplicate with A's id, and each node dispatches the event once.
    """
    a = broker_on(await nodes(redis_server.url).ready())
    b = broker_on(await nodes(redis_server.url).ready())
    item = Item.create("orders", "created", {"n": 7}, idempotency_key="order-7")
    (first,) = await publish(a, item)
    (again,) = await publish(b, item)
    assert not first.duplicate
    assert again.duplicate and again.id == first.id and again.clients == 0
    with pytest.raises(KeyConflict):
        await publish(b, Item.create("orders", "created", {"n": 8}, idempotency_key="order-7"))
    await settled(a, b)
    for broker in (a, b):
        assert broker.stats.published == 2  # the event and the marker
    assert await redis_server.command("XLEN", "sse:events") == 2
    ttl = await redis_server.command("PTTL", "sse:events:idempotency:order-7")
    assert 0 < int(ttl) <= 60_000


@pytest_twisted.ensureDeferred
async def test_concurrent_posts_of_one_key_on_two_nodes_deliver_once(
    redis_server: RedisServer, nodes: Any
) -> None:
    """
    Two nodes given the same key at the same moment (both claims in flight
    together, many times over) store and deliver exactly one event per key;
    the other answer is a duplicate with the same id.
    """
    a = broker_on(await nodes(redis_server.url).ready())
    b = broker_on(await nodes(redis_server.url).ready())
    rounds = 30
    answers = await gatherResults(
        [
            maybe_deferred(
                broker.publish_items([Item.create("c", data=n, idempotency_key=f"k{n}")])
            )
            for n in range(rounds)
            for broker in (a, b)
        ]
    ).addTimeout(10, global_reactor())
    for n in range(rounds):
        (x,), (y,) = answers[2 * n], answers[2 * n + 1]
        assert x.id == y.id
        assert sorted([x.duplicate, y.duplicate]) == [False, True]
    await settled(a, b)
    assert await redis_server.command("XLEN", "sse:events") == rounds + 1
    for broker in (a, b):
        assert broker.stats.published == rounds + 1
