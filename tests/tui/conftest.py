"""Fixtures for the TUI tests. The hub search and downloads screens run against the loopback Hub of the hub
tests (a real HTTP server on 127.0.0.1 serving tiny repos, with fault injection): its fixtures are shared here."""

from __future__ import annotations

from tests.hub.conftest import hub, hub_settings, manager, repo_folders, unused_port

__all__ = ["hub", "hub_settings", "manager", "repo_folders", "unused_port"]
