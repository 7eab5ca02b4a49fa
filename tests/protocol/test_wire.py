"""Tests for protocol/wire.py and protocol/messages.py: signed envelopes and their strict decoder.

Fuzz rule (style §5): `decode` returns an Envelope or raises `RemoteProtocolError`, nothing else.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import wire
from protocol.crypto import sha256
from protocol.errors import RemoteProtocolError
from protocol.messages import (
    MAX_REASON, MESSAGE_TYPES, SHARE_CIPHERTEXT_BYTES, Abort, AdvertiseKeys, ConsistencySignature,
    EncryptedShares, Invite, KeyBundle, MaskedInput, Message, ShareDelivery, SurvivorList, UnmaskRequest,
    UnmaskShares,
)
from protocol.params import MAX_DIMENSION, RoundParams
from protocol.shamir import SHARE_BYTES
from protocol.wire import RoundContext, decode, encode

KEY = nacl.signing.SigningKey(sha256(b"wire-test"))
SENDER = bytes(KEY.verify_key)
OTHER_KEY = nacl.signing.SigningKey(sha256(b"other"))
CTX = RoundContext("job-1", 3, 1)
PARAMS = RoundParams(dimension=16, bits=32, neighbours=4, threshold=3, min_survivors=3, phase_timeout=5.0)


def _id(i: int) -> bytes:
    return sha256(b"id", bytes([i]))


IDS = sorted(_id(i) for i in range(4))
SIMPLE_CASES: list[Message] = [
    Invite(tuple(IDS), PARAMS),
    AdvertiseKeys(b"\x01" * 32, b"\x02" * 32, b"\x03" * 32),
    KeyBundle((b"frame-a", b"frame-b")),
    KeyBundle(()),
    EncryptedShares(tuple((i, bytes([n]) * SHARE_CIPHERTEXT_BYTES) for n, i in enumerate(IDS))),
    ShareDelivery(((IDS[0], b"\x09" * SHARE_CIPHERTEXT_BYTES),)),
    MaskedInput(bytes(range(64))),
    SurvivorList(tuple(IDS[:3])),
    ConsistencySignature(b"\x05" * 32),
    UnmaskRequest((b"vote-1", b"vote-2"), (IDS[1],)),
    UnmaskShares(((IDS[0], b"\x01" * SHARE_BYTES),), ((IDS[2], b"\x02" * SHARE_BYTES), (IDS[3], b"\x03" * SHARE_BYTES))),
    Abort("too few survivors"),
]


def test_every_message_type_has_a_simple_case() -> None:
    assert {type(m) for m in SIMPLE_CASES} == set(MESSAGE_TYPES.values())


@pytest.mark.parametrize("message", SIMPLE_CASES, ids=lambda m: m.KIND)
def test_simple_round_trip(message: Message) -> None:
    frame = encode(CTX, message, KEY)
    envelope = decode(frame)
    assert envelope.message == message
    assert envelope.context == CTX
    assert envelope.sender == SENDER
    assert envelope.frame == frame


@pytest.mark.parametrize("message", SIMPLE_CASES, ids=lambda m: m.KIND)
def test_frame_layout_matches_the_spec(message: Message) -> None:
    # frame = [header, body, signature]; header = [version, kind, job, round, attempt, sender, sha256(body)]
    header, body, signature = msgpack.unpackb(encode(CTX, message, KEY))
    assert msgpack.unpackb(header) == [1, message.KIND, "job-1", 3, 1, SENDER, hashlib.sha256(body).digest()]
    assert body == msgpack.packb(message.to_wire(), use_bin_type=True)
    KEY.verify_key.verify(header, signature)


# --- hypothesis strategies for every message ----------------------------------------------------

ids = st.lists(st.binary(min_size=32, max_size=32), unique=True, max_size=6).map(lambda xs: tuple(sorted(xs)))
frames = st.lists(st.binary(max_size=64), max_size=4).map(tuple)


def _addressed(size: int) -> st.SearchStrategy[tuple[tuple[bytes, bytes], ...]]:
    return st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.binary(min_size=size, max_size=size)),
                    unique_by=lambda p: p[0], max_size=4).map(lambda ps: tuple(sorted(ps)))


@st.composite
def round_params(draw: st.DrawFn) -> RoundParams:
    k = 2 * draw(st.integers(1, 50))
    return RoundParams(
        dimension=draw(st.integers(1, MAX_DIMENSION)),
        bits=draw(st.integers(1, 32)),
        neighbours=k,
        threshold=draw(st.integers(2, k + 1)),
        min_survivors=draw(st.integers(2, 100_000)),
        phase_timeout=draw(st.floats(0.001, 3600)),
    )


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Invite, ids, round_params()),
    st.builds(AdvertiseKeys, *[st.binary(min_size=32, max_size=32)] * 3),
    st.builds(KeyBundle, frames),
    st.builds(EncryptedShares, _addressed(SHARE_CIPHERTEXT_BYTES)),
    st.builds(ShareDelivery, _addressed(SHARE_CIPHERTEXT_BYTES)),
    st.builds(MaskedInput, st.binary(max_size=64).map(lambda b: b[: len(b) // 4 * 4])),
    st.builds(SurvivorList, ids),
    st.builds(ConsistencySignature, st.binary(min_size=32, max_size=32)),
    st.builds(UnmaskRequest, frames, ids),
    st.builds(UnmaskShares, _addressed(SHARE_BYTES), _addressed(SHARE_BYTES)),
    st.builds(Abort, st.text(max_size=MAX_REASON)),
)
contexts = st.builds(
    RoundContext, st.text(min_size=1, max_size=wire.MAX_JOB_ID), st.integers(0, 2**53 - 1), st.integers(0, 2**53 - 1)
)


@settings(max_examples=200, deadline=None)
@given(message=messages, context=contexts)
def test_decode_encode_round_trip(message: Message, context: RoundContext) -> None:
    envelope = decode(encode(context, message, KEY))
    assert (envelope.message, envelope.context, envelope.sender) == (message, context, SENDER)


# --- fuzzing ---------------------------------------------------------------------------------------


def _decode_or_reject(data: Any) -> None:
    """The fuzz rule: a message or RemoteProtocolError. Any other exception fails the test."""
    try:
        envelope = decode(data)
    except RemoteProtocolError:
        return
    assert isinstance(envelope, wire.Envelope)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_remote_protocol_error(data: bytes) -> None:
    _decode_or_reject(data)


VALID_FRAMES = [encode(CTX, m, KEY) for m in SIMPLE_CASES]


@pytest.mark.parametrize("frame", VALID_FRAMES[:6], ids=[m.KIND for m in SIMPLE_CASES[:6]])
def test_truncation_at_every_length_is_rejected(frame: bytes) -> None:
    for cut in range(len(frame)):
        with pytest.raises(RemoteProtocolError):
            decode(frame[:cut])


def test_feeding_a_frame_one_byte_at_a_time_is_rejected_until_complete() -> None:
    frame = VALID_FRAMES[1]
    buffer = b""
    for byte in frame[:-1]:
        buffer += bytes([byte])
        with pytest.raises(RemoteProtocolError):
            decode(buffer)
    assert decode(buffer + frame[-1:]).message == SIMPLE_CASES[1]


@settings(max_examples=300, deadline=None)
@given(index=st.sampled_from(range(len(VALID_FRAMES))), data=st.data())
def test_bit_flips_are_rejected(index: int, data: st.DataObject) -> None:
    frame = bytearray(VALID_FRAMES[index])
    flips = data.draw(st.lists(st.integers(0, 8 * len(frame) - 1), min_size=1, max_size=3, unique=True))
    for bit in flips:
        frame[bit // 8] ^= 1 << (bit % 8)
    # Every byte of the frame is covered by the signature or the signed body digest, or is framing:
    # any flip either breaks parsing or authentication.
    with pytest.raises(RemoteProtocolError):
        decode(bytes(frame))


@settings(max_examples=200, deadline=None)
@given(index=st.sampled_from(range(len(VALID_FRAMES))), data=st.data())
def test_byte_insertions_and_deletions_raise_only_remote_protocol_error(index: int, data: st.DataObject) -> None:
    frame = bytearray(VALID_FRAMES[index])
    at = data.draw(st.integers(0, len(frame)))
    if data.draw(st.booleans()) and at < len(frame):
        del frame[at]
    else:
        frame[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    _decode_or_reject(bytes(frame))


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(value=msgpack_values)
def test_valid_msgpack_of_the_wrong_shape_is_rejected(value: Any) -> None:
    _decode_or_reject(msgpack.packb(value, use_bin_type=True))


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header=st.lists(msgpack_values, min_size=7, max_size=7) | msgpack_values, body=msgpack_values,
       signature=st.binary(min_size=64, max_size=64))
def test_wrong_types_inside_the_envelope_are_rejected(header: Any, body: Any, signature: bytes) -> None:
    frame = msgpack.packb([msgpack.packb(header, use_bin_type=True), msgpack.packb(body, use_bin_type=True), signature],
                          use_bin_type=True)
    _decode_or_reject(frame)


def _signed_frame(fields: list[Any], body: bytes, key: nacl.signing.SigningKey = KEY) -> bytes:
    """A correctly signed frame with arbitrary header fields (digest of `body` appended)."""
    header = msgpack.packb([*fields, hashlib.sha256(body).digest()], use_bin_type=True)
    return msgpack.packb([header, body, key.sign(header).signature], use_bin_type=True)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(sorted(MESSAGE_TYPES)), body=msgpack_values)
def test_correctly_signed_frames_with_wrong_body_types_are_rejected(kind: str, body: Any) -> None:
    # Past the signature check, a malformed body from an authenticated peer is still only a RemoteProtocolError.
    _decode_or_reject(_signed_frame([1, kind, "job", 0, 0, SENDER], msgpack.packb(body, use_bin_type=True)))


@pytest.mark.parametrize(
    "params",
    [
        [0, 32, 4, 3, 3, 5.0],  # dimension 0
        [16, 33, 4, 3, 3, 5.0],  # bits out of range
        [16, 32, 3, 3, 3, 5.0],  # odd neighbours
        [16, 32, 4, 9, 3, 5.0],  # threshold above k + 1
        [16, 32, 4, 3, 3, float("nan")],  # timeout NaN
        [16, 32, 4, 3, 3, -1.0],  # negative timeout
        [16, 32, 4, 3],  # too short
        [16, 32, 4, 3, 3, 5],  # timeout not a float
    ],
)
def test_invite_with_invalid_params_is_a_remote_error(params: list[Any]) -> None:
    # Regression: RoundParams raised ParameterError (a *local* error) out of decode for a signed Invite.
    body = msgpack.packb([IDS, params], use_bin_type=True)
    with pytest.raises(RemoteProtocolError, match="malformed body"):
        decode(_signed_frame([1, "invite", "job", 0, 0, SENDER], body))


@pytest.mark.parametrize(
    ("message", "body"),
    [
        ("survivors", [IDS[1], IDS[0]]),  # not sorted
        ("survivors", [IDS[0], IDS[0]]),  # repeated id
        ("survivors", [b"short"]),
        ("unmask_request", [[], [IDS[2], IDS[1]]]),
        ("shares", [[IDS[1], bytes(SHARE_CIPHERTEXT_BYTES)], [IDS[0], bytes(SHARE_CIPHERTEXT_BYTES)]]),
        ("shares", [[IDS[0], bytes(SHARE_CIPHERTEXT_BYTES - 1)]]),
        ("unmask", [[[IDS[0], bytes(SHARE_BYTES)], [IDS[0], bytes(SHARE_BYTES)]], []]),
        ("masked", b"abc"),
        ("masked", [1, 2]),
        ("advertise", [b"\x01" * 32, b"\x02" * 32]),
        ("consistency", b"\x05" * 31),
        ("keys", [b"x" * 1025]),
        ("abort", "x" * (MAX_REASON + 1)),
        ("abort", b"bytes"),
    ],
)
def test_malformed_bodies_are_rejected(message: str, body: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="malformed body") as info:
        decode(_signed_frame([1, message, "job", 0, 0, SENDER], msgpack.packb(body, use_bin_type=True)))
    assert info.value.peer == SENDER


def test_oversize_frame_rejected() -> None:
    frame = VALID_FRAMES[0]
    assert decode(frame, max_bytes=len(frame)).message == SIMPLE_CASES[0]
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decode(frame, max_bytes=len(frame) - 1)
    with pytest.raises(RemoteProtocolError, match="exceeds the limit"):
        decode(bytes(wire.MAX_FRAME_BYTES + 1))


@pytest.mark.parametrize("version", [0, 2, True, 1.0, "1", None])
def test_unknown_version_rejected(version: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="version"):
        decode(_signed_frame([version, "abort", "job", 0, 0, SENDER], msgpack.packb("x")))


@pytest.mark.parametrize("kind", ["bogus", "", "ABORT", 7, None, b"abort"])
def test_unknown_kind_rejected(kind: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="kind"):
        decode(_signed_frame([1, kind, "job", 0, 0, SENDER], msgpack.packb("x")))


@pytest.mark.parametrize(
    ("job", "round_number", "attempt"),
    [("", 0, 0), ("x" * (wire.MAX_JOB_ID + 1), 0, 0), ("job", -1, 0), ("job", 0, 2**53), ("job", 1.0, 0), (b"job", 0, 0), ("job", 0, True)],
)
def test_bad_context_rejected(job: Any, round_number: Any, attempt: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="context"):
        decode(_signed_frame([1, "abort", job, round_number, attempt, SENDER], msgpack.packb("x")))


def test_bad_signature_rejected() -> None:
    frame = encode(CTX, Abort("x"), KEY)
    header, body, signature = msgpack.unpackb(frame)
    cases = [
        [header, body, bytes(64)],
        [header, body, signature[:-1] + bytes([signature[-1] ^ 1])],
        [header, body, OTHER_KEY.sign(header).signature],  # signed by someone else, claiming SENDER
        [header, body, signature[:63]],
    ]
    for parts in cases:
        with pytest.raises(RemoteProtocolError, match="signature"):
            decode(msgpack.packb(parts, use_bin_type=True))


def test_body_swapped_under_a_valid_header_rejected() -> None:
    header, _, signature = msgpack.unpackb(encode(CTX, Abort("pay 1"), KEY))
    forged = msgpack.packb([header, msgpack.packb("pay 1000"), signature], use_bin_type=True)
    with pytest.raises(RemoteProtocolError, match="digest"):
        decode(forged)


def test_bad_sender_id_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="sender"):
        decode(_signed_frame([1, "abort", "job", 0, 0, SENDER[:31]], msgpack.packb("x")))


@pytest.mark.parametrize("frame", ["text", bytearray(VALID_FRAMES[0]), memoryview(VALID_FRAMES[0]), None, 5])
def test_non_bytes_frame_rejected(frame: Any) -> None:
    with pytest.raises(RemoteProtocolError, match="bytes"):
        decode(frame)


@pytest.mark.parametrize("extra", [b"\x00", b"\xc0"])
def test_trailing_bytes_rejected(extra: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(VALID_FRAMES[0] + extra)


def test_frames_with_maps_or_extensions_rejected() -> None:
    for value in [{"a": 1}, msgpack.ExtType(1, b"x")]:
        with pytest.raises(RemoteProtocolError):
            decode(msgpack.packb([value, b"", bytes(64)], use_bin_type=True))


param_values = st.one_of(st.integers(-(2**63), 2**64 - 1), st.floats(), st.booleans(), st.none(), st.text(max_size=3))


@settings(max_examples=300, deadline=None)
@given(params=st.lists(param_values, min_size=5, max_size=7) | st.lists(st.integers(-3, 40), min_size=6, max_size=6).map(
    lambda xs: [*xs[:5], float(xs[5])]
))
def test_signed_invites_with_arbitrary_params_raise_only_remote_protocol_error(params: list[Any]) -> None:
    _decode_or_reject(_signed_frame([1, "invite", "job", 0, 0, SENDER], msgpack.packb([IDS, params], use_bin_type=True)))


@settings(max_examples=120, deadline=None)
@given(data=st.binary(max_size=256) | msgpack_values.map(lambda v: msgpack.packb([msgpack.packb(v), b"", b""])))
def test_peek_raises_only_remote_protocol_error(data: bytes) -> None:
    try:
        wire.peek(data)
    except RemoteProtocolError:
        pass


def test_peek_reads_the_routing_fields_without_verifying() -> None:
    frame = encode(CTX, Abort("x"), KEY)
    assert wire.peek(frame) == (CTX, "abort", SENDER)
    header, body, _ = msgpack.unpackb(frame)
    unsigned = msgpack.packb([header, body, bytes(64)], use_bin_type=True)
    assert wire.peek(unsigned) == (CTX, "abort", SENDER)  # routing only:
    with pytest.raises(RemoteProtocolError, match="signature"):
        decode(unsigned)  # decode still refuses it
