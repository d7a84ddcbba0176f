"""Peer: aiohttp with aiohttp-sse."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _broker import Broker, parse_args
from aiohttp import web
from aiohttp_sse import sse_response


def main() -> None:
    args = parse_args()
    broker = Broker(args.queue_size)
    # aiohttp-sse requires a positive interval; "off" becomes once an hour.
    ping = args.ping if args.ping > 0 else 3600.0

    async def events(request: web.Request) -> web.StreamResponse:
        channel = request.query.get("channel")
        q = broker.subscribe(channel)
        try:
            async with sse_response(request, ping_interval=ping) as resp:
                await resp.write(b": ok\r\n\r\n")  # sends the headers at once
                while True:
                    event, data = await q.get()
                    await resp.send(data, event=event)
        finally:
            broker.unsubscribe(channel, q)
        return resp

    async def publish(request: web.Request) -> web.Response:
        broker.publish_body(await request.read())
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/events", events)
    app.router.add_post("/publish", publish)
    web.run_app(app, host="127.0.0.1", port=args.port, backlog=2048, print=None, access_log=None)


if __name__ == "__main__":
    main()
