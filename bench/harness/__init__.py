"""The benchmark harness behind bench/run.py, one job a module.

- `config`: paths, CPU pinning, server and scenario names, scenario sizes;
- `build`: what is built or checked before a run (load generator, venv, Go, Redis);
- `procfs`: CPU and memory of a process from /proc;
- `servers`: the servers under test, redis-server and the scale-out cluster;
- `load`: the `loadgen` subscriber and publisher processes;
- `metrics`: counts and latency percentiles out of the load generator's results;
- `delivery`: the one publish-and-deliver measurement (burst, paced, redis-*);
- `scenarios`: idle, slow, capacity and channels, and the scenario table;
- `report`: the markdown tables and lists; `targets`: the checks against the targets;
- `profiling`: py-spy during a long burst;
- `runner`: the interleaved run loop, the JSON and the report of a run;
- `cli`: the options and main.

Only the standard library is used, so any Python 3.10+ runs it.
"""
