"""The C{twistd sse} plugin: only a pointer to L{sse_twisted.tap}."""

from twisted.application.service import ServiceMaker

serviceMaker = ServiceMaker(
    "sse_twisted",
    "sse_twisted.tap",
    "A Server-Sent Events broker (GET to subscribe, POST to publish).",
    "sse",
)
