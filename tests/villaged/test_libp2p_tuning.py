"""The signed-peer-record memo: a record is verified once per (peer, bytes), a bad one every time."""

from __future__ import annotations

from typing import Any

import multiaddr
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.kad_dht.utils import maybe_consume_signed_record as consume_dht_record
from libp2p.peer.id import ID
from libp2p.peer.peerstore import create_signed_peer_record

from villaged.transport.tuning import RecordMemo, dht_record_key


def closer_peer(record: bytes, peer_id: ID) -> Any:
    """A closer peer as a FIND_NODE response carries it: its id beside its signed record."""
    peer = Message.Peer()
    peer.id = peer_id.to_bytes()
    peer.signedRecord = record
    return peer


def test_a_dht_record_is_verified_once_and_a_forged_one_every_time() -> None:
    host = new_host(key_pair=create_new_key_pair())
    keys = create_new_key_pair()
    peer_id = ID.from_pubkey(keys.public_key)
    record = create_signed_peer_record(peer_id, [multiaddr.Multiaddr("/ip4/10.0.0.1/tcp/4001")], keys.private_key)
    good = record.marshal_envelope()
    forged = bytearray(good)
    forged[-1] ^= 1  # the signature's last byte
    calls: list[bytes] = []

    def counted(msg: Any, host: Any, peer_id: Any = None) -> bool:
        calls.append(msg.signedRecord)
        return consume_dht_record(msg, host, peer_id)

    memo = RecordMemo(counted, dht_record_key)
    assert all(memo(closer_peer(good, peer_id), host) for _ in range(3))
    assert calls == [good]
    assert [str(a) for a in host.get_peerstore().addrs(peer_id)] == ["/ip4/10.0.0.1/tcp/4001"]
    assert not any(memo(closer_peer(bytes(forged), peer_id), host) for _ in range(2))
    assert calls == [good, bytes(forged), bytes(forged)]
    other = ID.from_pubkey(create_new_key_pair().public_key)
    assert not memo(closer_peer(good, other), host)  # the same bytes claimed for another peer: checked, refused
