"""
Helpers shared by the suites (fixtures live in the conftest files):

- `conn`: a real Site/HTTPChannel on a StringTransport, for the deterministic tests;
- `chunks`: HTTP/1.1 chunked bodies, decoded;
- `processes`: real processes (`twistd -n sse`, example scripts) on loopback ports,
  raw-socket subscribers, polling with deadlines;
- `redis_server`: real redis-server processes for the Redis tests.
"""
