"""Repository-wide pytest set-up: the shared fixtures of tests/support."""

pytest_plugins = ["tests.support.fixtures", "tests.support.browser"]
