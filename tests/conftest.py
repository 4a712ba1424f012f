"""Shared pytest fixtures: free ports, process helpers that always clean up."""

from __future__ import annotations
