"""Longrun."""
