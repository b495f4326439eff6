"""The client's tests run against the real stack: a gateway, a progress hub and a worker as processes.

One stack for all of them (starting three Python services costs seconds, many more on a busy machine); each
test gets a tenant of its own, so tests never see each other's jobs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clientstack import Stack

from longrun_client import Client


@pytest.fixture(scope="session")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(redis_url, tmp_path_factory.mktemp("stack"))
    try:
        yield stack.up()
    finally:
        stack.stop()


@pytest.fixture
def api_key(stack: Stack) -> str:
    return stack.new_key()


@pytest.fixture
def client(stack: Stack, api_key: str) -> Iterator[Client]:
    with stack.client(api_key) as lr:
        yield lr
