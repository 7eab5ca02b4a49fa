"""Tests for protocol/membership.py: issue, encode, verify, registry; fuzzed decoder."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ParameterError, RemoteProtocolError
from protocol.membership import (
    MAX_CLOCK_SKEW_SECONDS,
    AdminKeyPair,
    MemberRegistry,
    MembershipCertificate,
    decode_certificate,
    issue_certificate,
    verify_certificate,
    village_id_for,
)

ADMIN = AdminKeyPair(seed=bytes(range(32)))
OTHER_ADMIN = AdminKeyPair(seed=bytes(range(1, 33)))
ALICE = bytes([0xA1]) * 32
BOB = bytes([0xB0]) * 32
T0 = 1_700_000_000
DAY = 86_400


def issue(member: bytes = ALICE, issued_at: int = T0, expires_at: int = T0 + 30 * DAY, admin: AdminKeyPair = ADMIN) -> bytes:
    return issue_certificate(admin.signing_key, admin.village_id, member, issued_at, expires_at).encode()


def test_round_trip_and_verify() -> None:
    cert = issue_certificate(ADMIN.signing_key, ADMIN.village_id, ALICE, T0, T0 + DAY)
    raw = cert.encode()
    assert decode_certificate(raw) == cert
    assert verify_certificate(raw, ADMIN.public_key, ADMIN.village_id, now=T0 + 10) == cert
    assert verify_certificate(raw, ADMIN.public_key, ADMIN.village_id, now=T0, member_id=ALICE) == cert


def test_village_id_is_derived_from_admin_key() -> None:
    assert ADMIN.village_id == village_id_for(ADMIN.public_key)
    assert len(ADMIN.village_id) == 16
    assert ADMIN.village_id != OTHER_ADMIN.village_id


@pytest.mark.parametrize(
    ("now", "reason"),
    [
        (T0 + DAY, "expired"),
        (T0 + 2 * DAY, "expired"),
        (T0 - MAX_CLOCK_SKEW_SECONDS - 1, "not valid until"),
    ],
)
def test_time_window(now: float, reason: str) -> None:
    raw = issue(expires_at=T0 + DAY)
    with pytest.raises(RemoteProtocolError, match=reason) as info:
        verify_certificate(raw, ADMIN.public_key, ADMIN.village_id, now=now)
    assert info.value.phase == "membership"
    assert info.value.peer is None


def test_small_clock_skew_is_accepted() -> None:
    raw = issue()
    verify_certificate(raw, ADMIN.public_key, ADMIN.village_id, now=T0 - MAX_CLOCK_SKEW_SECONDS)


def test_wrong_village_admin_member() -> None:
    raw = issue()
    with pytest.raises(RemoteProtocolError, match="not this village's admin"):
        verify_certificate(raw, OTHER_ADMIN.public_key, ADMIN.village_id, now=T0)
    with pytest.raises(RemoteProtocolError, match="is for village"):
        verify_certificate(raw, ADMIN.public_key, OTHER_ADMIN.village_id, now=T0)
    with pytest.raises(RemoteProtocolError, match="presented by"):
        verify_certificate(raw, ADMIN.public_key, ADMIN.village_id, now=T0, member_id=BOB)


def test_forged_signature_and_tampered_fields() -> None:
    cert = decode_certificate(issue())
    # Extend one's own expiry: the signature no longer matches.
    fields = msgpack.unpackb(cert.encode())
    fields[4] = T0 + 3650 * DAY
    with pytest.raises(RemoteProtocolError, match="bad certificate signature"):
        verify_certificate(msgpack.packb(fields), ADMIN.public_key, ADMIN.village_id, now=T0)
    # Sign with another key but claim this admin.
    forged = issue_certificate(OTHER_ADMIN.signing_key, ADMIN.village_id, BOB, T0, T0 + DAY)
    fields = msgpack.unpackb(forged.encode())
    fields[5] = ADMIN.public_key
    with pytest.raises(RemoteProtocolError, match="bad certificate signature"):
        verify_certificate(msgpack.packb(fields), ADMIN.public_key, ADMIN.village_id, now=T0)


def test_a_verified_certificate_is_remembered_but_a_forged_signature_on_it_is_not() -> None:
    raw = issue()
    for _ in range(2):  # the second check is answered from memory, and still checks the time
        assert verify_certificate(raw, ADMIN.public_key, ADMIN.village_id, now=T0).member_id == ALICE
    with pytest.raises(RemoteProtocolError, match="expired"):
        verify_certificate(raw, ADMIN.public_key, ADMIN.village_id, now=T0 + 3650 * DAY)
    fields = msgpack.unpackb(raw)
    fields[-1] = bytes([fields[-1][0] ^ 1]) + fields[-1][1:]  # the signature, one bit off
    with pytest.raises(RemoteProtocolError, match="bad certificate signature"):
        verify_certificate(msgpack.packb(fields), ADMIN.public_key, ADMIN.village_id, now=T0)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: f[:6], "7 fields"),
        (lambda f: [2, *f[1:]], "version"),
        (lambda f: [True, *f[1:]], "version"),
        (lambda f: [f[0], f[1][:15], *f[2:]], "village_id"),
        (lambda f: [*f[:2], "a" * 32, *f[3:]], "member_id"),
        (lambda f: [*f[:3], 1.5, *f[4:]], "issued_at"),
        (lambda f: [*f[:3], -1, *f[4:]], "issued_at"),
        (lambda f: [*f[:4], f[3], *f[5:]], "expires_at"),
        (lambda f: [*f[:6], f[6][:63]], "signature"),
        (lambda f: {"v": 1}, "msgpack array"),
    ],
)
def test_malformed_fields_are_named(mutate: object, reason: str) -> None:
    fields = msgpack.unpackb(issue())
    raw = msgpack.packb(mutate(fields), use_bin_type=True)  # type: ignore[operator]
    with pytest.raises(RemoteProtocolError, match=reason):
        decode_certificate(raw)


def test_trailing_bytes_and_oversize_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="not valid msgpack"):
        decode_certificate(issue() + b"\x00")
    with pytest.raises(RemoteProtocolError, match="limit"):
        decode_certificate(bytes(10_000))


def test_issue_rejects_bad_parameters() -> None:
    with pytest.raises(ParameterError, match="expires_at"):
        issue_certificate(ADMIN.signing_key, ADMIN.village_id, ALICE, T0, T0)
    with pytest.raises(ParameterError, match="member_id"):
        issue_certificate(ADMIN.signing_key, ADMIN.village_id, ALICE[:31], T0, T0 + 1)
    with pytest.raises(ParameterError, match="seed"):
        AdminKeyPair(seed=b"short")


@given(st.binary(max_size=600))
def test_decoder_raises_only_remote_protocol_error(data: bytes) -> None:
    try:
        cert = decode_certificate(data)
    except RemoteProtocolError:
        return
    assert isinstance(cert, MembershipCertificate)


@given(st.binary(max_size=200), st.integers(0, 200))
def test_verify_on_corrupted_certificate_raises_only_remote_protocol_error(noise: bytes, cut: int) -> None:
    raw = issue()
    data = raw[:cut] + noise + raw[cut + len(noise):]
    try:
        verify_certificate(data, ADMIN.public_key, ADMIN.village_id, now=T0)
    except RemoteProtocolError:
        return
    assert data == raw or decode_certificate(data) == decode_certificate(raw)


class TestRegistry:
    def registry(self) -> MemberRegistry:
        return MemberRegistry(ADMIN.public_key, ADMIN.village_id)

    def test_admit_and_expire(self) -> None:
        reg = self.registry()
        reg.admit(issue(ALICE, expires_at=T0 + DAY), now=T0)
        assert reg.is_member(ALICE, T0 + DAY - 1)
        assert not reg.is_member(ALICE, T0 + DAY)
        assert not reg.is_member(BOB, T0)
        assert [c.member_id for c in reg.members(T0)] == [ALICE]
        assert reg.members(T0 + DAY) == []
        assert reg.prune(T0 + DAY) == [ALICE]
        assert reg.certificate(ALICE, T0) is None

    def test_rejects_invalid_certificate(self) -> None:
        reg = self.registry()
        with pytest.raises(RemoteProtocolError):
            reg.admit(issue(admin=OTHER_ADMIN), now=T0)
        with pytest.raises(RemoteProtocolError, match="expired"):
            reg.admit(issue(expires_at=T0 + 1), now=T0 + 5)
        assert not reg.is_member(ALICE, T0)

    def test_newer_certificate_wins_old_one_does_not_replace(self) -> None:
        reg = self.registry()
        old = issue(ALICE, issued_at=T0, expires_at=T0 + 30 * DAY)
        new = issue(ALICE, issued_at=T0 + DAY, expires_at=T0 + 10 * DAY)
        reg.admit(old, now=T0 + DAY)
        assert reg.admit(new, now=T0 + DAY).issued_at == T0 + DAY
        assert reg.admit(old, now=T0 + DAY).issued_at == T0 + DAY
        assert not reg.is_member(ALICE, T0 + 10 * DAY)

    def test_constructor_checks_sizes(self) -> None:
        with pytest.raises(ParameterError, match="village_id"):
            MemberRegistry(ADMIN.public_key, b"x")


def test_module_is_pure() -> None:
    import ast
    import pathlib

    import protocol.membership as module

    tree = ast.parse(pathlib.Path(module.__file__).read_text())
    imported = {
        (node.module or "") if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    forbidden = {"time", "os", "socket", "trio", "sqlite3", "random", "datetime", "libp2p"}
    assert not {name.split(".")[0] for name in imported} & forbidden
