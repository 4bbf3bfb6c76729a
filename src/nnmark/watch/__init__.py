"""``nnmark watch``: an inventory of deployments audited on a schedule, as a service.

Each target of the inventory (``nnmark.audit.inventory``) is audited at its interval, with jitter, through the
audit's own code path (``nnmark.audit.run.audit_target``) on a random subset of each key's queries. Its parts:

- ``store``: the SQLite state folder (rounds, verdicts, queries sent, events, current states);
- ``exposure``: the random subset a round asks, and the share of each key's queries ever sent to a target;
- ``events``: state changes per target x key, and their Alertmanager-format webhook;
- ``metrics``: the Prometheus metrics; ``page``: the HTML page at ``/``; ``server``: ``/metrics``, ``/healthz``, ``/``;
- ``watcher``: one target's round, the schedule and the loop that runs until stopped.
"""
