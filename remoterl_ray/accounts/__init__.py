"""Accounts: API keys, workspaces, plans and usage records (relay core, no Ray).

The relay and the ``remoterl keys`` / ``remoterl usage`` commands share one
SQLite store; under Ray Serve a single accounts actor owns it and the relay
replicas ask it (``serve_apps/``).
"""
