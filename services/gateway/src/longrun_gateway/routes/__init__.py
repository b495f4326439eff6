"""HTTP routes, one resource per module."""

from __future__ import annotations

from fastapi import APIRouter

from . import admin_keys, dashboard, dead_letters, files, health, jobs, operations, tasks, tokens, workflows

ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    tasks.router,
    jobs.router,
    workflows.router,
    tokens.router,
    files.router,
    dead_letters.router,
    admin_keys.router,
    operations.router,
    dashboard.router,
)
