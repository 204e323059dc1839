"""The benchmark harness behind bench/run.py.

targets.py   what is measured: the table of servers, how each one is launched
server.py    one server's life: start (pinned or not), readiness, RSS of its tree, stop
wrk.py       running wrk and reading its report
scenarios.py how a target is measured (throughput today; cold start, cache hit, recycle
             under load and proxy later), one function per scenario in a table
report.py    the printed table, the ratios against the peers, the JSON file

Only the standard library and psutil are used, so that the runner has no dependency
beyond what the project already installs.
"""
