"""Who may ask a served model, decided by ``serve.authorize`` (fast, no server; mutation-tested): one bearer token,
or named clients with a token each (the caller's name comes back), or no token at all."""

import pytest

from nnmark.errors import ArgumentError, EndpointError
from nnmark.oracles import auth
from nnmark.oracles.auth import check_client, check_token, read_clients
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
        assert _refused(header, b"s3cret") == "missing bearer token (send 'Authorization: Bearer <token>')"
    assert _refused("Bearer s3cret\udcff", b"s3cret") == "wrong bearer token"  # no byte a token holds: no crash


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


def test_a_refused_client_name_is_shown_cut_to_80_characters():
    with pytest.raises(ArgumentError) as e:
        check_client("y" + "x" * 99)
    assert str(e.value).endswith(f"got {'y' + 'x' * 79!r}")


def test_a_token_is_printable_ascii_or_tab_and_never_empty():
    assert check_token("  ~ !tok\t") == b"~ !tok" and check_token(b"\tA\x7e\x20B") == b"A~ B"
    for bad in ("tok\x7f", "tok\x1f", "tok\udcff", "tok\u00e9", b"tok\xff"):
        with pytest.raises(EndpointError, match="^token holds a character an HTTP header cannot carry"):
            check_token(bad)
    with pytest.raises(EndpointError, match="^token is empty$"):
        check_token(" \n")


def test_a_clients_file_of_exactly_the_bound_is_read_and_a_non_ascii_name_refused(tmp_path):
    f = tmp_path / "clients"
    line = b"alice tok\n"
    f.write_bytes(line + b"#" * (auth.MAX_CLIENTS_BYTES - len(line) - 1) + b"\n")
    assert f.stat().st_size == auth.MAX_CLIENTS_BYTES and read_clients(f) == {"alice": b"tok"}
    f.write_bytes("caf\u00e9 tok\n".encode())
    with pytest.raises(EndpointError, match="line 1: a client name"):
        read_clients(f)
    with pytest.raises(EndpointError, match="cannot read clients file: No such file or directory$"):
        read_clients(tmp_path / "missing")
