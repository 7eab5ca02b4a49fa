"""Tests for the admin-signed revocation list in protocol/membership.py and the registry honouring it."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import MemberRevoked, ParameterError, RemoteProtocolError
from protocol.membership import (
    MAX_REVOCATION_REASON_CHARS,
    AdminKeyPair,
    MemberRegistry,
    RevocationList,
    RevokedMember,
    decode_revocations,
    issue_certificate,
    issue_revocations,
    verify_revocations,
)

ADMIN = AdminKeyPair(seed=bytes(range(32)))
OTHER_ADMIN = AdminKeyPair(seed=bytes(range(1, 33)))
ALICE = bytes([0xA1]) * 32
BOB = bytes([0xB0]) * 32
T0 = 1_700_000_000
DAY = 86_400


def certificate(member: bytes) -> bytes:
    return issue_certificate(ADMIN.signing_key, ADMIN.village_id, member, T0, T0 + 7 * DAY).encode()


def revocations(serial: int, *members: bytes, admin: AdminKeyPair = ADMIN, reason: str = "left the team") -> bytes:
    revoked = [RevokedMember(m, T0 + serial, reason) for m in members]
    return issue_revocations(admin.signing_key, admin.village_id, serial, T0 + serial, revoked).encode()


def test_round_trip_sorted_and_verified() -> None:
    raw = revocations(3, BOB, ALICE)
    listed = verify_revocations(raw, ADMIN.public_key, ADMIN.village_id)
    assert isinstance(listed, RevocationList) and decode_revocations(raw) == listed
    assert listed.serial == 3 and [r.member_id for r in listed.revoked] == [ALICE, BOB]
    assert listed.revoked[0].reason == "left the team"


def test_a_list_signed_by_another_admin_or_for_another_village_is_refused() -> None:
    with pytest.raises(RemoteProtocolError, match="not this village's admin"):
        verify_revocations(revocations(1, ALICE, admin=OTHER_ADMIN), ADMIN.public_key, ADMIN.village_id)
    forged = msgpack.unpackb(revocations(1, ALICE, admin=OTHER_ADMIN))
    forged[1], forged[5] = ADMIN.village_id, ADMIN.public_key  # claims this village: the signature gives it away
    with pytest.raises(RemoteProtocolError, match="bad revocation list signature"):
        verify_revocations(msgpack.packb(forged), ADMIN.public_key, ADMIN.village_id)
    with pytest.raises(RemoteProtocolError, match="is for village"):
        verify_revocations(revocations(1, ALICE), ADMIN.public_key, OTHER_ADMIN.village_id)


def test_an_unrevoked_member_cannot_be_slipped_out_of_a_signed_list() -> None:
    fields = msgpack.unpackb(revocations(2, ALICE, BOB))
    fields[4] = fields[4][1:]  # drop ALICE
    with pytest.raises(RemoteProtocolError, match="bad revocation list signature"):
        verify_revocations(msgpack.packb(fields), ADMIN.public_key, ADMIN.village_id)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda f: f[:6], "7 fields"),
        (lambda f: [2, *f[1:]], "version"),
        (lambda f: [f[0], f[1][:15], *f[2:]], "village_id"),
        (lambda f: [*f[:2], 0, *f[3:]], "serial"),
        (lambda f: [*f[:2], True, *f[3:]], "serial"),
        (lambda f: [*f[:3], -5, *f[4:]], "issued_at"),
        (lambda f: [*f[:4], "everyone", *f[5:]], "revoked"),
        (lambda f: [*f[:4], [[ALICE[:31], T0, ""]], *f[5:]], r"revoked\[0\].member_id"),
        (lambda f: [*f[:4], [[ALICE, 1.5, ""]], *f[5:]], r"revoked\[0\].revoked_at"),
        (lambda f: [*f[:4], [[ALICE, T0, b"bytes"]], *f[5:]], r"revoked\[0\].reason"),
        (lambda f: [*f[:4], [[ALICE, T0, "x" * (MAX_REVOCATION_REASON_CHARS + 1)]], *f[5:]], r"revoked\[0\].reason"),
        (lambda f: [*f[:4], [[ALICE, T0]], *f[5:]], r"revoked\[0\]"),
        (lambda f: [*f[:4], [[BOB, T0, ""], [ALICE, T0, ""]], *f[5:]], r"revoked\[1\].member_id"),
        (lambda f: [*f[:4], [[ALICE, T0, ""], [ALICE, T0, ""]], *f[5:]], r"revoked\[1\].member_id"),
        (lambda f: [*f[:5], f[5][:31], f[6]], "admin_public_key"),
        (lambda f: [*f[:6], f[6][:63]], "signature"),
        (lambda f: {"serial": 1}, "msgpack array"),
    ],
)
def test_malformed_fields_are_named(mutate: object, field: str) -> None:
    fields = msgpack.unpackb(revocations(1, ALICE))
    raw = msgpack.packb(mutate(fields), use_bin_type=True)  # type: ignore[operator]
    with pytest.raises(RemoteProtocolError, match=field) as info:
        decode_revocations(raw)
    assert info.value.phase == "revocations"


def test_issue_refuses_a_member_listed_twice() -> None:
    with pytest.raises(ParameterError, match="member_id"):
        issue_revocations(ADMIN.signing_key, ADMIN.village_id, 1, T0, [RevokedMember(ALICE, T0), RevokedMember(ALICE, T0 + 1)])


@given(st.binary(max_size=400))
def test_decoder_raises_only_remote_protocol_error(data: bytes) -> None:
    try:
        listed = decode_revocations(data)
    except RemoteProtocolError:
        return
    assert isinstance(listed, RevocationList)


class TestRegistry:
    def registry(self) -> MemberRegistry:
        registry = MemberRegistry(ADMIN.public_key, ADMIN.village_id)
        registry.admit(certificate(ALICE), now=T0)
        registry.admit(certificate(BOB), now=T0)
        return registry

    def test_a_revoked_member_stops_being_a_member_at_once_and_is_refused_at_every_admission(self) -> None:
        registry = self.registry()
        assert registry.apply_revocations(revocations(1, ALICE)) is not None
        assert not registry.is_member(ALICE, T0) and registry.certificate(ALICE, T0) is None
        assert [c.member_id for c in registry.members(T0)] == [BOB]
        with pytest.raises(MemberRevoked, match="revoked") as info:
            registry.admit(certificate(ALICE), now=T0, member_id=ALICE)
        assert info.value.peer == ALICE and "left the team" in info.value.reason
        renewed = issue_certificate(ADMIN.signing_key, ADMIN.village_id, ALICE, T0 + DAY, T0 + 8 * DAY).encode()
        with pytest.raises(MemberRevoked):  # a certificate issued after the revocation does not help
            registry.admit(renewed, now=T0 + DAY)
        assert registry.revocation(ALICE) is not None and registry.revocation(BOB) is None

    def test_an_older_list_never_replaces_a_newer_one(self) -> None:
        registry = self.registry()
        assert registry.apply_revocations(revocations(5, ALICE, BOB)) is not None
        assert registry.apply_revocations(revocations(4)) is None  # older: ignored
        assert registry.apply_revocations(revocations(5)) is None  # the same serial: ignored
        assert registry.revocations is not None and registry.revocations.serial == 5
        assert registry.revocation(ALICE) is not None
        assert registry.apply_revocations(revocations(6, BOB)) is not None  # newer: the admin re-admits ALICE
        registry.admit(certificate(ALICE), now=T0)
        assert registry.is_member(ALICE, T0) and not registry.is_member(BOB, T0)

    def test_a_list_from_another_admin_changes_nothing(self) -> None:
        registry = self.registry()
        with pytest.raises(RemoteProtocolError, match="not this village's admin"):
            registry.apply_revocations(revocations(9, ALICE, admin=OTHER_ADMIN))
        assert registry.is_member(ALICE, T0) and registry.revocations is None
