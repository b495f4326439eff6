"""The errors a task may raise, and those the worker raises inside and out of it (re-exported by api.py)."""

from __future__ import annotations


class TransientError(Exception):
    """A failure worth retrying (network blip, busy dependency): follows the task's retry policy."""


class PermanentError(Exception):
    """A failure no retry can fix (bad input file): fails the job at once with this message."""


class JobCancelled(Exception):
    """Raised inside a task at its next progress report after a cancel was requested."""


class JobFenced(Exception):
    """This attempt was superseded (presumed lost, then came back): stop without writing anything."""


class JobFailed(Exception):
    """Raised out of the Celery task after the job was recorded as failed, so Celery and Flower say FAILURE."""


class JobDrained(Exception):
    """The worker is shutting down: the job was checkpointed and goes back to the queue."""
