"""The Python client's token calls: Registry.create_token, list_tokens, revoke_token and whoami."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mreg.client import MregError


def test_create_list_revoke_and_whoami(secured, unique: str) -> None:
    with secured.registry(secured.admin_token) as admin:
        token, secret = admin.create_token(f"py-{unique}", "writer", "acme/secure", expires=timedelta(days=1))
        assert (token.name, token.role, token.scope) == (f"py-{unique}", "writer", "acme/secure")
        expiry = token.expire_time
        assert timedelta(hours=23) < expiry - datetime.now(UTC) <= timedelta(days=1)
        admin_token, _ = admin.create_token(f"py-admin-{unique}", "admin")
        assert admin_token.scope == "*"

        with secured.registry(secret) as writer:
            caller = writer.whoami()
            assert caller.authentication_enabled and caller.token.name == f"py-{unique}"

        listed = {t.name: t for t in admin.list_tokens(page_size=1)}
        assert {f"py-{unique}", f"py-admin-{unique}"} <= set(listed)
        assert listed[f"py-{unique}"].revoke_time is None

        assert admin.revoke_token(f"py-{unique}").revoke_time is not None
        with pytest.raises(MregError) as error:
            admin.revoke_token(f"nobody-{unique}")
        assert error.value.code == "NOT_FOUND"
        with pytest.raises(MregError) as error:
            admin.create_token(f"bad-{unique}", "owner", "acme")
        assert error.value.code == "INVALID_ARGUMENT"


def test_tokens_cannot_be_made_while_authentication_is_off(registry, unique: str) -> None:
    # Otherwise anyone could mint an admin token before an operator turns authentication on.
    for attempt in (
        lambda: registry.create_token(f"early-{unique}", "admin"),
        lambda: registry.revoke_token(f"early-{unique}"),
    ):
        with pytest.raises(MregError) as refused:
            attempt()
        assert (refused.value.code, refused.value.reason) == ("FAILED_PRECONDITION", "AUTHENTICATION_DISABLED")
    assert not [t for t in registry.list_tokens() if t.name == f"early-{unique}"]


@pytest.mark.parametrize("name", ["", "has space", "x" * 65])
def test_revoking_a_name_no_token_could_have_is_invalid_argument_naming_the_rule(secured, name: str) -> None:
    # NOT_FOUND would say "try another name"; the name itself is what is wrong.
    with secured.registry(secured.admin_token) as admin, pytest.raises(MregError) as error:
        admin.revoke_token(name)
    assert error.value.code == "INVALID_ARGUMENT"
    assert "1-64 letters, digits" in str(error.value)
