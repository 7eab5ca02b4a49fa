"""Signed announcements: round trips, the roster's entries, and a decoder that only ever raises
RemoteProtocolError whatever bytes arrive."""

from __future__ import annotations

import dataclasses

import msgpack
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.announcements import (
    MAX_ROSTER_ADDRESSES, JobAnnouncement, JoinAnnouncement, ResultAnnouncement, RosterAnnouncement, RosterEntry,
    open_announcement, sign_announcement,
)
from protocol.errors import ParameterError, RemoteProtocolError
from protocol.jobs import JobSpec
from protocol.membership import AdminKeyPair, issue_certificate

ADMIN = AdminKeyPair(b"\x07" * 32)


def member(seed: int) -> tuple[nacl.signing.SigningKey, bytes]:
    key = nacl.signing.SigningKey(seed.to_bytes(32, "big"))
    me = bytes(key.verify_key)
    cert = issue_certificate(ADMIN.signing_key, ADMIN.village_id, me, 0, 2**31).encode()
    return key, cert


def roster(count: int) -> RosterAnnouncement:
    entries = []
    for seed in range(1, count + 1):
        key, cert = member(seed)
        entries.append(RosterEntry(bytes(key.verify_key), cert, (f"/ip4/127.0.0.1/tcp/{4000 + seed}",)))
    return RosterAnnouncement("job-1", tuple(sorted(entries, key=lambda e: e.member)))


def resign(fields: list[object], key: nacl.signing.SigningKey, cert: bytes, kind: str = "roster") -> bytes:
    """A record with arbitrary fields, correctly signed: the body parser, not the signature, must refuse it."""
    author = bytes(key.verify_key)
    signed = msgpack.packb([1, kind, author, fields, cert], use_bin_type=True)
    return msgpack.packb([1, kind, author, fields, cert, key.sign(signed).signature], use_bin_type=True)


def test_a_roster_round_trips_with_certificates_and_addresses() -> None:
    key, cert = member(5000)
    body = roster(5)
    opened = open_announcement(sign_announcement(body, key, cert))
    assert opened.author == bytes(key.verify_key)
    assert opened.body == body
    assert isinstance(opened.body, RosterAnnouncement)
    assert opened.body.members == tuple(sorted(e.member for e in body.entries))


def test_a_300_member_roster_fits_in_one_announcement() -> None:
    key, cert = member(5000)
    record = sign_announcement(roster(300), key, cert)
    assert len(open_announcement(record).body.entries) == 300  # type: ignore[union-attr]


@pytest.mark.parametrize("mangle, reason", [
    (lambda e: [e[1], e[0], *e[2:]], "strictly increasing"),
    (lambda e: [[e[0][0], b"", e[0][2]], *e[1:]], "certificate"),
    (lambda e: [[e[0][0], e[0][1], ["/ip4/1.2.3.4/tcp/1"] * (MAX_ROSTER_ADDRESSES + 1)], *e[1:]], "addresses"),
    (lambda e: [[e[0][0][:31], e[0][1], e[0][2]], *e[1:]], "32-byte"),
    (lambda e: [[e[0][0], e[0][1], [7]], *e[1:]], "addresses"),
])
def test_a_malformed_roster_is_refused_with_the_reason(mangle: object, reason: str) -> None:
    key, cert = member(5000)
    entries = [entry.fields() for entry in roster(3).entries]
    record = resign(["job-1", mangle(entries)], key, cert)  # type: ignore[operator]
    with pytest.raises(RemoteProtocolError, match=reason):
        open_announcement(record)


def test_a_tampered_roster_fails_its_signature() -> None:
    key, cert = member(5000)
    record = bytearray(sign_announcement(roster(3), key, cert))
    record[-70] ^= 1  # inside the signed fields
    with pytest.raises(RemoteProtocolError):
        open_announcement(bytes(record))


def test_an_oversized_announcement_is_refused_when_signed() -> None:
    key, cert = member(5000)
    with pytest.raises(ParameterError, match="gossip limit"):
        sign_announcement(roster(1200), key, cert)


def test_a_join_round_trips() -> None:
    key, cert = member(9)
    opened = open_announcement(sign_announcement(JoinAnnouncement("job-9"), key, cert))
    assert opened.body == JoinAnnouncement("job-9")
    assert opened.certificate == cert


def test_a_job_round_trips_with_the_creators_addresses() -> None:
    key, cert = member(9)
    spec = JobSpec.from_dict({"kind": "vector", "data": "x", "dimension": 10})
    body = JobAnnouncement("job-9", spec, 1_800_000_000.0, ("/ip4/127.0.0.1/tcp/4001",))
    assert open_announcement(sign_announcement(body, key, cert)).body == body
    for bad in (["/ip4/1.2.3.4/tcp/1"] * (MAX_ROSTER_ADDRESSES + 1), [7], "/ip4/1.2.3.4/tcp/1"):
        record = resign(["job-9", spec.to_dict(), 1_800_000_000.0, bad], key, cert, kind="job")
        with pytest.raises(RemoteProtocolError, match="addresses of the creator"):
            open_announcement(record)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    try:
        open_announcement(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4), max_leaves=20))
def test_arbitrary_roster_fields_raise_only_remote_protocol_error(fields: object) -> None:
    key, cert = member(5000)
    try:
        open_announcement(resign(["job-1", fields], key, cert))
    except RemoteProtocolError:
        pass



def result_announcement() -> ResultAnnouncement:
    return ResultAnnouncement("job-1", 2, 1, (b"\x01" * 32, b"\x03" * 32), (b"\x02" * 32,), b"\x0a" * 32, b"\x0b" * 32,
                              {"masked": 0.25})


def test_a_result_round_trips_with_its_votes_digest_and_participants() -> None:
    key, cert = member(5001)
    body = open_announcement(sign_announcement(result_announcement(), key, cert)).body
    assert body == result_announcement()
    assert isinstance(body, ResultAnnouncement)
    assert body.participants == (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)


def test_a_training_result_carries_its_model_digest_and_a_form_2_result_reads_with_none() -> None:
    """Form 3 adds the digest of the model a training round produced; results stored before it (form 2)
    still open, with an empty digest, and a digest of the wrong size is refused."""
    key, cert = member(5001)
    trained = dataclasses.replace(result_announcement(), model_digest=b"\x0c" * 32)
    assert open_announcement(sign_announcement(trained, key, cert)).body == trained
    form_2 = [2, *result_announcement().fields()[1:9]]
    body = open_announcement(resign(form_2, key, cert, kind="result")).body
    assert isinstance(body, ResultAnnouncement) and body.model_digest == b"" and body.votes_digest == b"\x0b" * 32
    wrong = [*trained.fields()[:9], b"\x0c" * 31]
    with pytest.raises(RemoteProtocolError, match="model_digest must be empty or 32 bytes"):
        open_announcement(resign(wrong, key, cert, kind="result"))


def test_a_result_in_the_old_form_without_evidence_is_refused_by_name() -> None:
    """Form 1 (before issue #15) had no votes digest: a node refuses it, saying which form it needs."""
    key, cert = member(5001)
    old = ["job-1", 2, 1, [b"\x01" * 32], [], b"\x0a" * 32, [["masked", 0.25]]]
    with pytest.raises(RemoteProtocolError, match="result form 1 is not accepted: form 3 .* is required"):
        open_announcement(resign(old, key, cert, kind="result"))
    overlapping = result_announcement().fields()
    overlapping[5] = [b"\x01" * 32]
    with pytest.raises(RemoteProtocolError, match="both a survivor and dropped"):
        open_announcement(resign(overlapping, key, cert, kind="result"))
