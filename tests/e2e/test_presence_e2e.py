"""
Presence on a real `twistd sse`: GET /presence, its authority, and
sse.join/sse.leave seen by a subscriber on a raw socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt

from ..support.processes import RawSubscriber, SSEServer, presence_events, wait

SECRET = "e2e-presence-secret-0123456789abcdef"
TOKEN = "e2e-presence-publish-token-0123456789"


def token(sub: str, **sse: Any) -> str:
    claims = {"sse": sse, "sub": sub, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def presence(srv: SSEServer, channel: str, **headers: str) -> tuple[int, Any]:
    status, _, body = srv.request("GET", f"/presence?channel={channel}", headers=headers)
    return status, body


def test_presence_answers_with_streams_and_users(start: Callable[..., SSEServer]) -> None:
    """
    GET /presence from loopback counts the open streams on the channel and
    lists their distinct users, sorted; a closed stream drops out.
    """
    srv = start("--jwt-secret", SECRET)
    subs = [
        RawSubscriber(srv, f"/events?channel=room&token={token('zoe')}"),
        RawSubscriber(srv, f"/events?channel=room&token={token('ada')}"),
        RawSubscriber(srv, "/events?channel=room"),
    ]
    for s in subs:
        s.read_until(b": connected")
    status, body = presence(srv, "room")
    assert status == 200
    assert body == {"channel": "room", "clients": 3, "users": ["ada", "zoe"]}
    subs[0].close()
    wait(lambda: presence(srv, "room")[1]["users"] == ["ada"], "zoe's stream gone")
    assert presence(srv, "room")[1]["clients"] == 2
    for s in subs[1:]:
        s.close()


def test_presence_authority_is_publishings(start: Callable[..., SSEServer]) -> None:
    """
    With a publish token: none gets 401, the token 200; a JWT that may not
    publish to the channel 403, one that may 200; without a token, a loopback
    peer naming another Host 403; a missing channel 400. Each with a JSON error.
    """
    srv = start("--jwt-secret", SECRET, "--publish-token", TOKEN, "--private-channel", "vip.*")
    status, body = presence(srv, "vip.a")
    assert status == 401 and body["error"]
    assert presence(srv, "vip.a", Authorization=f"Bearer {TOKEN}")[0] == 200
    news = token("ed", publish=["news"])
    status, body = presence(srv, "vip.a", Authorization=f"Bearer {news}")
    assert status == 403 and "vip.a" in body["error"]
    vip = token("ed", publish=["vip.*"])
    assert presence(srv, "vip.a", Authorization=f"Bearer {vip}")[0] == 200
    status, _, body = srv.request("GET", "/presence", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 400 and body["error"]
    open_ = start()
    status, body = presence(open_, "room", Host="attacker.example")
    assert status == 403 and "Host" in body["error"]


def test_join_and_leave_reach_a_subscriber(start: Callable[..., SSEServer]) -> None:
    """
    With --presence-events a subscriber of the channel sees sse.join when a
    user's first stream opens (with the channel's clients), nothing for a
    reconnect within --leave-grace, and sse.leave once the last stream has
    been gone that long.
    """
    srv = start("--jwt-secret", SECRET, "--presence-events", "--leave-grace", "1")
    watcher = RawSubscriber(srv, "/events?channel=room")
    watcher.read_until(b": connected")
    ada = RawSubscriber(srv, f"/events?channel=room&token={token('ada')}")
    watcher.read_until(b"event: sse.join")
    assert presence_events(watcher) == [("sse.join", {"user": "ada", "clients": 2})]
    ada.close()
    again = RawSubscriber(srv, f"/events?channel=room&token={token('ada')}")  # a reconnect
    again.read_until(b": connected")
    wait(lambda: presence(srv, "room")[1]["clients"] == 2, "the old stream gone")
    time.sleep(1.5)  # past the grace period: proving that no leave comes needs time
    srv.publish("room", "marker", 1)
    watcher.read_until(b"event: marker")
    assert [name for name, _ in presence_events(watcher)] == ["sse.join"]
    again.close()
    watcher.read_until(b"event: sse.leave", timeout=10)
    assert presence_events(watcher)[-1] == ("sse.leave", {"user": "ada", "clients": 1})
    watcher.close()
