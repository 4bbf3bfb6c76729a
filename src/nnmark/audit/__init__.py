"""Audit: every key an owner holds asked of one model or a fleet of endpoints, in one report.

- ``log``: the HMAC-chained, append-only JSONL audit log (``append``, ``verify_log``).
"""
