"""Settings: production refuses dev secrets; API keys and tenant names are checked at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from longrun_common.settings import DEV_TOKEN_SECRET, Settings

pytestmark = pytest.mark.unit


def test_production_refuses_development_secrets() -> None:
    with pytest.raises(ValidationError, match="LONGRUN_API_KEYS must be set"):
        Settings(env="production", token_secret="x" * 40)
    with pytest.raises(ValidationError, match="LONGRUN_TOKEN_SECRET must be set"):
        Settings(env="production", api_keys="acme:k1", token_secret=DEV_TOKEN_SECRET)
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(env="production", api_keys="acme:k1", token_secret="short")
    assert Settings(env="production", api_keys="acme:k1", token_secret="s" * 32).tenant_by_key == {"k1": "acme"}


def test_tenant_names_that_cannot_be_folders_are_refused() -> None:
    with pytest.raises(ValidationError, match="acme corp"):
        Settings(api_keys="acme corp:k1")
    with pytest.raises(ValidationError, match="not of the form tenant:key"):
        Settings(api_keys="justakey")
    assert Settings(api_keys="acme-1:k1,beta.co:k2").tenant_by_key == {"k1": "acme-1", "k2": "beta.co"}


def test_postgres_urls_get_the_psycopg_driver() -> None:
    assert Settings(database_url="postgresql://u@h/db").sqlalchemy_url == "postgresql+psycopg://u@h/db"
    assert Settings(database_url="postgres://u@h/db").sqlalchemy_url == "postgresql+psycopg://u@h/db"
