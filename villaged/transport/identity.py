"""The node's long-term Ed25519 identity, and the two names it goes by.

The protocol layer names members by their raw 32-byte Ed25519 public key (the "member id");
libp2p names the same key by a peer id, an identity multihash of the protobuf-encoded key.
This module owns the key file and converts between the two names, so nothing else needs to
know how libp2p encodes keys.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import Ed25519PrivateKey, Ed25519PublicKey, create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID
from nacl.signing import SigningKey

from villaged.errors import ConfigError

KEY_FILE_NAME = "identity.key"
MEMBER_ID_SIZE = 32


def load_or_create_identity(data_dir: Path) -> KeyPair:
    """Load `data_dir/identity.key`, or create it (mode 0600) on first start.

    Raises ConfigError if the file is readable by group or others (someone may have copied
    the key: make a new identity or `chmod 600` it if you are sure) or does not hold an
    Ed25519 private key.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = data_dir / KEY_FILE_NAME
    try:
        return _load(path)
    except FileNotFoundError:
        pass
    keypair = create_new_key_pair()
    # O_EXCL: two daemons racing on one data dir must not both write a key.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(keypair.private_key.serialize())
        f.flush()
        os.fsync(f.fileno())
    return keypair


def _load(path: Path) -> KeyPair:
    fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise ConfigError(
                path, "permissions",
                f"private key file has mode {mode:04o}, readable by others; "
                "expected 0600 (chmod 600 it, or delete it to make a new identity)",
            )
        raw = f.read()
    try:
        private_key = deserialize_private_key(raw)
    except Exception as exc:  # libp2p raises several unrelated types for bad bytes
        raise ConfigError(path, "key", f"not a libp2p private key ({exc})") from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ConfigError(path, "key", f"expected an Ed25519 key, found {type(private_key).__name__}")
    return KeyPair(private_key, private_key.get_public_key())


def member_id(keypair: KeyPair) -> bytes:
    """The raw 32-byte Ed25519 public key: how the protocol layer names this node."""
    return bytes(signing_key(keypair).verify_key)


def signing_key(keypair: KeyPair) -> SigningKey:
    """The PyNaCl signing key behind the libp2p key pair, for protocol-level signatures."""
    private_key = keypair.private_key
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ValueError(f"village identities are Ed25519, got {type(private_key).__name__}")
    return private_key.impl


def peer_id_from_member_id(member: bytes) -> ID:
    """The libp2p peer id of a member (an identity multihash of its public key)."""
    if len(member) != MEMBER_ID_SIZE:
        raise ValueError(f"a member id is {MEMBER_ID_SIZE} bytes, got {len(member)}")
    return ID.from_pubkey(Ed25519PublicKey.from_bytes(member))


@functools.lru_cache(maxsize=16384)
def member_id_from_peer_id(peer_id: ID) -> bytes:
    """The 32-byte member id inside an Ed25519 peer id.

    Raises ValueError for any other kind of peer id (RSA and secp256k1 ids either hash the
    key or hold a different key type, and village members are Ed25519 only). Cached: every
    inbound stream and every listing of connected peers asks, and decoding the key took 4 % of
    a net-100 coordinator process's CPU.
    """
    public_key = peer_id.extract_public_key()
    if not isinstance(public_key, Ed25519PublicKey):
        raise ValueError(f"peer id {peer_id} is not an Ed25519 identity")
    return public_key.to_bytes()
