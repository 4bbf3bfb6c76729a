"""Who may ask a served model, decided by ``serve.authorize`` (fast, no server; mutation-tested): one bearer token,
or named clients with a token each (the caller's name comes back), or no token at all."""

import pytest

from nnmark.errors import ArgumentError
from nnmark.oracles.auth import check_client
from nnmark.serve import _Refused, authorize

CLIENTS = {"alice": b"tok-alice", "bob": b"tok-bob", "carol": b"tok-carol"}


def _refused(header, token=None, clients=None) -> str:
    with pytest.raises(_Refused) as e:
        authorize(header, token, clients)
    assert e.value.status == 401
    return e.value.message


def test_an_open_server_lets_anyone_ask_and_names_no_one():
    for header in (None, "", "Bearer anything", "Basic x"):
        assert authorize(header, None) is None
        assert authorize(header, None, {}) is None


def test_one_token_admits_its_bearer_only():
    assert authorize("Bearer s3cret", b"s3cret") is None
    assert authorize("bearer   s3cret  ", b"s3cret") is None
    assert authorize("BEARER s3cret", b"s3cret") is None
    assert _refused("Bearer s3cre", b"s3cret") == "wrong bearer token"
    assert _refused("Bearer s3crets", b"s3cret") == "wrong bearer token"
    for header in (None, "", "Bearer", "Bearer ", "Bearer    ", "Basic s3cret", "s3cret", "Bearers3cret"):
        assert _refused(header, b"s3cret").startswith("missing bearer token")


def test_named_clients_are_told_apart_by_their_tokens():
    for name, token in CLIENTS.items():
        assert authorize(f"Bearer {token.decode()}", None, CLIENTS) == name
        assert authorize(f"bearer {token.decode()} ", None, CLIENTS) == name
    assert authorize("Bearer tok-carol", None, {"carol": b"tok-carol"}) == "carol"
    for header in ("Bearer tok-dave", "Bearer tok-alice2", "Bearer tok-alic", "Bearer tok-alice tok-bob"):
        assert _refused(header, None, CLIENTS) == "wrong bearer token"
    for header in (None, "Bearer ", "Token tok-alice"):
        assert _refused(header, None, CLIENTS).startswith("missing bearer token")


def test_with_named_clients_a_lone_token_admits_no_one():
    assert _refused("Bearer s3cret", b"s3cret", CLIENTS) == "wrong bearer token"
    assert authorize("Bearer tok-bob", b"s3cret", CLIENTS) == "bob"


@pytest.mark.parametrize("name", ["a", "A.b_c-9", "0", "x" * 64])
def test_client_names_of_the_documented_form_pass(name):
    assert check_client(name) == name


@pytest.mark.parametrize("name", ["", "-a", ".a", "_a", "x" * 65, "a b", "a/b", "caf\u00e9", "a\n", None, 7])
def test_other_client_names_are_refused(name):
    with pytest.raises(ArgumentError, match="client name"):
        check_client(name)
