"""Deployment commands: ``models``, ``promote``, ``rollback``, ``serve``, ``schedule``."""

from __future__ import annotations
