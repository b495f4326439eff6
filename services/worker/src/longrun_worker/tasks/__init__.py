"""Built-in tasks; importing this package registers them."""

from . import csv_profile, demo, files

__all__ = ["csv_profile", "demo", "files"]
