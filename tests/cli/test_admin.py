"""Tests for cli/admin.py: key file, member id parsing (hex and libp2p peer id), expiry parsing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cli.admin import create_admin_key, load_admin_key, parse_expiry, parse_member_id, peer_id_for
from cli.errors import CliError

KEY = bytes(range(32))
# Computed with py-libp2p: ID.from_pubkey(Ed25519PublicKey.from_bytes(bytes(range(32)))).to_base58()
KEY_PEER_ID = "12D3KooW9pP4Seg3kZYhySpuVjn1RPdQBsUFZKiFxGMGQN5MeL6A"
NOW = 1_700_000_000


def test_member_id_from_hex_and_peer_id() -> None:
    assert parse_member_id(KEY.hex()) == KEY
    assert parse_member_id(KEY.hex().upper()) == KEY
    assert parse_member_id(KEY_PEER_ID) == KEY
    assert peer_id_for(KEY) == KEY_PEER_ID


@pytest.mark.parametrize(
    "text",
    ["", "abc", KEY.hex()[:62], "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", KEY_PEER_ID[:-1] + "0"],
)
def test_bad_member_ids_are_explained(text: str) -> None:
    with pytest.raises(CliError, match="neither 64 hex characters"):
        parse_member_id(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", NOW + 30 * 86_400), ("12h", NOW + 43_200), ("90m", NOW + 5_400), ("2w", NOW + 1_209_600),
     ("2030-01-31", 1_896_048_000), ("2030-01-31T12:00:00+02:00", 1_896_084_000)],
)  # fmt: skip
def test_expiry(text: str, expected: int) -> None:
    assert parse_expiry(text, NOW) == expected


@pytest.mark.parametrize(("text", "fragment"), [("soon", "expected a duration"), ("0d", "longer than zero"), ("2001-01-01", "in the past")])
def test_bad_expiry(text: str, fragment: str) -> None:
    with pytest.raises(CliError, match=fragment):
        parse_expiry(text, NOW)


def test_key_file_round_trip_and_permissions(tmp_path: Path) -> None:
    keys = create_admin_key(tmp_path / "admin", KEY)
    path = tmp_path / "admin" / "admin.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_admin_key(tmp_path / "admin") == keys
    with pytest.raises(CliError, match="already exists"):
        create_admin_key(tmp_path / "admin", KEY)


def test_key_file_problems_name_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="no admin key at .*villagectl village init"):
        load_admin_key(tmp_path)
    path = tmp_path / "admin.key"
    for content, fragment in [
        ("{", "not valid JSON"),
        ('{"kind": "other"}', "field 'kind'"),
        ('{"kind": "village-admin-key", "version": 1, "seed": "xyz"}', "field 'seed'"),
        (json.dumps({"kind": "village-admin-key", "version": 1, "seed": KEY.hex(), "public_key": "00"}), "field 'public_key'"),
    ]:
        path.write_text(content)
        with pytest.raises(CliError, match=fragment):
            load_admin_key(tmp_path)


def test_revoke_signs_the_next_serial_on_top_of_the_admin_dirs_list(tmp_path: Path) -> None:
    from cli.admin import REVOCATIONS_FILENAME, revoke_member
    from protocol.membership import AdminKeyPair, verify_revocations

    keys = create_admin_key(tmp_path / "admin", KEY)
    first = revoke_member(tmp_path / "admin", keys, b"\xa1" * 32, "left", NOW)
    second = revoke_member(tmp_path / "admin", keys, b"\xb0" * 32, "", NOW + 1)
    assert (first.serial, second.serial) == (1, 2)
    held = verify_revocations((tmp_path / "admin" / REVOCATIONS_FILENAME).read_bytes(), keys.public_key, keys.village_id)
    assert held == second and [r.member_id for r in held.revoked] == [b"\xa1" * 32, b"\xb0" * 32]
    with pytest.raises(CliError, match="already revoked"):
        revoke_member(tmp_path / "admin", keys, b"\xa1" * 32, "", NOW + 2)
    other = AdminKeyPair(bytes(range(1, 33)))  # a list this admin did not sign is never built upon
    with pytest.raises(CliError, match="not this village's admin"):
        revoke_member(tmp_path / "admin", other, b"\xc0" * 32, "", NOW + 2)
