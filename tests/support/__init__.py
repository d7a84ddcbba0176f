"""
Helpers shared by the suites; the fixtures live in the conftest files
(tests/unit: clock; tests/e2e: server, start; tests/redis: redis-server,
buses, nodes; tests/interop: browser, page, servers, proxies).

- `conn`: a real Site/HTTPChannel on a StringTransport (`Conn`, `serve`, `post`);
- `chunks`: HTTP/1.1 chunked bodies, decoded;
- `flow`: the model test's client (a transport with TCP's flow control) and its checks;
- `processes`: real processes (`twistd -n sse`, example scripts) on loopback
  ports, raw-socket subscribers, `free_port`, `wait` with a deadline, `rss`;
- `faults`: the fault tests' streams, crowds and publishers;
- `redis_server`: real redis-server processes for the Redis tests;
- `clients`: browser pages and third-party clients (sseclient-py, httpx-sse);
- `proxy`: a loopback TCP proxy that can cut or reset connections;
- `tls`: a self-signed certificate for loopback TLS.
"""
