#!/usr/bin/env python3
"""Side-by-side benchmark of sse_twisted against its peers (see bench/README.md).

One command builds what it needs (the C load generator, the Go/gin server when
Go and gin are installed from Debian, the peers' venv in bench/.venv), then runs
every scenario on every server, interleaved round by round (A B C A B C ...),
prints markdown tables of medians with min-max and the ratio of each peer to
sse_twisted, and writes the raw numbers to bench/results/<timestamp>.json.

Only the standard library is used here, so any Python 3.10+ can run it; the
code is in bench/harness/ (one job a module, listed in its __init__).
All traffic goes to 127.0.0.0/8; every load process has a count and a hard
wall-clock limit, and every server is killed by its PID when its run ends.
"""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
