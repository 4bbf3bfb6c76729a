"""Audit: every key an owner holds asked of one model or a fleet of endpoints, in one report.

- ``run``: ask a target (or a fleet) every key through one recording oracle per key, decide each with the
  method's own verifier on the queries asked so far (``audit_target``, ``audit_fleet``).
- ``sequential``: the stop rules and their error bounds (first flip; e-values at ``alpha``; one environment).
- ``report``: the summary line per target and the Markdown / JSON / HTML report.
- ``log``: the HMAC-chained, append-only JSONL audit log (``append``, ``verify_log``).
- ``inventory``: a fleet as a TOML file, each target with its own endpoint shape, keys and interval (``load``).
- ``states``: the state a monitor acts on per target and key (ok, failed, inconsistent, misconfigured,
  unreachable, error), decided from verdicts and error types.

Example::

    keys_ = run.load_keys(["dbi.key", "metafinger.key"], secret=secret)
    reports = run.audit_fleet([run.local_target("model.safetensors")], keys_, run.Settings(secret=secret))
    report.write_report("audit.html", reports, {"alpha": 1e-3})
    log.append("audit.jsonl", run.log_record(reports, run.Settings(secret=secret)), secret)
    fleet = inventory.load("fleet.toml")
    reports = run.audit_each(inventory.audit_jobs(fleet, secret=secret), run.Settings(secret=secret))
"""
