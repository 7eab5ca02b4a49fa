"""Tests for villaged/transport/identity.py: the key file and member id <-> peer id conversions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from libp2p.crypto.secp256k1 import create_new_key_pair as create_secp256k1_key_pair
from libp2p.peer.id import ID

from villaged.errors import ConfigError
from villaged.transport.identity import (
    KEY_FILE_NAME,
    load_or_create_identity,
    member_id,
    member_id_from_peer_id,
    peer_id_from_member_id,
    signing_key,
)


def test_key_file_is_0600_and_reloads_to_the_same_member(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_or_create_identity(tmp_path / "data")
    assert member_id(again) == member_id(first)
    assert len(member_id(first)) == 32


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o640])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    load_or_create_identity(tmp_path)
    path = tmp_path / KEY_FILE_NAME
    os.chmod(path, mode)
    with pytest.raises(ConfigError) as info:
        load_or_create_identity(tmp_path)
    assert info.value.path == path
    assert info.value.field == "permissions"
    assert "chmod 600" in str(info.value)


def test_garbage_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(b"not a key")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="key"):
        load_or_create_identity(tmp_path)


def test_member_and_peer_ids_convert_both_ways(tmp_path: Path) -> None:
    keypair = load_or_create_identity(tmp_path)
    member = member_id(keypair)
    assert peer_id_from_member_id(member) == ID.from_pubkey(keypair.public_key)
    assert member_id_from_peer_id(peer_id_from_member_id(member)) == member
    assert bytes(signing_key(keypair).verify_key) == member


def test_signatures_from_signing_key_verify_under_member_id(tmp_path: Path) -> None:
    keypair = load_or_create_identity(tmp_path)
    signed = signing_key(keypair).sign(b"round 7")
    assert keypair.public_key.verify(b"round 7", signed.signature)


def test_non_ed25519_peer_id_is_refused() -> None:
    with pytest.raises(ValueError, match="not an Ed25519 identity"):
        member_id_from_peer_id(ID.from_pubkey(create_secp256k1_key_pair().public_key))


def test_member_id_of_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        peer_id_from_member_id(b"\x01" * 31)
