"""Peer: sse-starlette's EventSourceResponse on uvicorn (asyncio+h11 or uvloop+httptools)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import uvicorn
from _broker import Broker, parse_args
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def main() -> None:
    args = parse_args(
        lambda p: (
            p.add_argument("--loop", default="asyncio"),
            p.add_argument("--http", default="h11"),
        )
    )
    broker = Broker(args.queue_size)

    async def events(request: Request) -> EventSourceResponse:
        channel = request.query_params.get("channel")
        q = broker.subscribe(channel)

        async def stream():
            try:
                yield ServerSentEvent(comment="ok")  # sends the headers at once
                while True:
                    event, data = await q.get()
                    yield ServerSentEvent(data=data, event=event)
            finally:
                broker.unsubscribe(channel, q)

        return EventSourceResponse(stream(), ping=args.ping)

    async def publish(request: Request) -> JSONResponse:
        broker.publish_body(await request.body())
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/events", events), Route("/publish", publish, methods=["POST"])])
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        http=args.http,
        log_level="warning",
        access_log=False,
        backlog=2048,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
