"""The `longrun` command (typer + rich)."""

from .app import app, main

__all__ = ["app", "main"]
