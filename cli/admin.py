"""The village admin's side of membership: the key file, member ids, expiry, certificate files.

The signing itself is `protocol.membership`; this module is the I/O around it for villagectl:
where the admin key lives (``ADMIN_DIR/admin.key``, JSON, mode 0600), where the newest revocation
list lives (``ADMIN_DIR/revocations.bin``: each `villagectl village revoke` signs the next serial
on top of it), how a member is named on the command line (64 hex characters of its Ed25519 key,
or its libp2p peer id ``12D3KooW...``), and how ``--expires`` is written (``7d``, ``12h``, ``2w``,
or an ISO date/time).
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cli.errors import CliError
from protocol.errors import ParameterError, RemoteProtocolError
from protocol.membership import AdminKeyPair, RevocationList, RevokedMember, issue_revocations, verify_revocations

__all__ = [
    "ADMIN_KEY_FILENAME",
    "REVOCATIONS_FILENAME",
    "create_admin_key",
    "load_admin_key",
    "revoke_member",
    "parse_expiry",
    "parse_member_id",
    "write_private_file",
]

ADMIN_KEY_FILENAME: Final = "admin.key"
REVOCATIONS_FILENAME: Final = "revocations.bin"
_KEY_FILE_KIND: Final = "village-admin-key"
_BASE58_ALPHABET: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
# A libp2p Ed25519 peer id is the identity multihash (0x00, length 0x24) of the protobuf
# PublicKey {Type: Ed25519 (08 01), Data: 32 bytes (12 20 ...)}.
_PEER_ID_PREFIX: Final = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])
_DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DURATION_RE: Final = re.compile(r"^(\d+)([smhdw])$")


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; refuses to overwrite."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} already exists; refusing to overwrite it") from None
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def create_admin_key(admin_dir: Path, seed: bytes) -> AdminKeyPair:
    """Write a new admin key made from ``seed`` (32 random bytes) to ``admin_dir/admin.key``."""
    try:
        admin_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise CliError(f"cannot create admin dir {admin_dir}: {exc.strerror}") from None
    keys = AdminKeyPair(seed=seed)
    document = {
        "kind": _KEY_FILE_KIND,
        "version": 1,
        "seed": keys.seed.hex(),
        "public_key": keys.public_key.hex(),
        "village_id": keys.village_id.hex(),
    }
    write_private_file(admin_dir / ADMIN_KEY_FILENAME, (json.dumps(document, indent=2) + "\n").encode())
    return keys


def load_admin_key(admin_dir: Path) -> AdminKeyPair:
    """Read ``admin_dir/admin.key``; every problem names the file and the field."""
    path = admin_dir / ADMIN_KEY_FILENAME
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise CliError(f"no admin key at {path}; create one with: villagectl village init --admin-dir {admin_dir}") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CliError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("kind") != _KEY_FILE_KIND:
        raise CliError(f"{path}: not a village admin key file (field 'kind' must be {_KEY_FILE_KIND!r})")
    if document.get("version") != 1:
        raise CliError(f"{path}: field 'version' must be 1, got {document.get('version')!r}")
    try:
        keys = AdminKeyPair(seed=bytes.fromhex(str(document.get("seed"))))
    except (ValueError, ParameterError):
        raise CliError(f"{path}: field 'seed' must be 64 hex characters") from None
    if document.get("public_key") != keys.public_key.hex():
        raise CliError(f"{path}: field 'public_key' does not match 'seed'; the file is corrupted")
    return keys


def revoke_member(admin_dir: Path, keys: AdminKeyPair, member_id: bytes, reason: str, now: float) -> RevocationList:
    """Sign the next revocation list (the one in ``admin_dir`` plus ``member_id``, serial + 1) and
    make it the admin dir's newest (replaced atomically: a crash leaves the old or the new list)."""
    path = admin_dir / REVOCATIONS_FILENAME
    try:
        previous = verify_revocations(path.read_bytes(), keys.public_key, keys.village_id)
    except FileNotFoundError:
        previous = None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except RemoteProtocolError as exc:
        raise CliError(f"{path}: {exc.reason}; move it away only if you know no node holds a newer list") from None
    revoked = list(previous.revoked) if previous is not None else []
    if any(r.member_id == member_id for r in revoked):
        raise CliError(f"member {member_id.hex()} is already revoked in {path} (serial {previous and previous.serial})")
    try:
        revoked.append(RevokedMember(member_id, int(now), reason))
        listed = issue_revocations(keys.signing_key, keys.village_id, (previous.serial if previous else 0) + 1,
                                   int(now), revoked)
    except ParameterError as exc:
        raise CliError(f"--{exc.field.replace('_', '-')}: {exc.reason}") from None
    tmp = path.with_name(f".{REVOCATIONS_FILENAME}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    write_private_file(tmp, listed.encode())
    os.replace(tmp, path)
    return listed


def parse_member_id(text: str) -> bytes:
    """A member id from 64 hex characters or an Ed25519 libp2p peer id (base58, ``12D3KooW...``), or
    from what `villaged id` prints (its ``member_id ...`` line, or its --json object), as it is."""
    text = text.strip()
    try:
        printed = json.loads(text)
    except ValueError:
        printed = None
    if isinstance(printed, dict) and isinstance(printed.get("member_id"), str):
        text = printed["member_id"]
    elif (line := re.search(r"^member_id\s+(\S+)\s*$", text, re.M)) is not None:
        text = line.group(1)
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = _base58_decode(text)
    except ValueError:
        raw = b""
    if len(raw) == len(_PEER_ID_PREFIX) + 32 and raw.startswith(_PEER_ID_PREFIX):
        return raw[len(_PEER_ID_PREFIX):]
    raise CliError(
        f"member {text!r} is neither 64 hex characters (the member's Ed25519 public key) "
        "nor an Ed25519 libp2p peer id (12D3KooW...)"
    )


def peer_id_for(member_id: bytes) -> str:
    """The libp2p peer id string of a member id (the inverse of `parse_member_id`)."""
    return _base58_encode(_PEER_ID_PREFIX + member_id)


def _base58_decode(text: str) -> bytes:
    if not text:
        raise ValueError("empty")
    number = 0
    for char in text:
        digit = _BASE58_ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"{char!r} is not a base58 character")
        number = number * 58 + digit
    leading_zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return bytes(leading_zeros) + body


def _base58_encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    chars = []
    while number:
        number, digit = divmod(number, 58)
        chars.append(_BASE58_ALPHABET[digit])
    leading_zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * leading_zeros + "".join(reversed(chars))


def parse_expiry(text: str, now: float) -> int:
    """Unix time for ``--expires``: a duration from ``now`` (``90m``, ``12h``, ``30d``, ``2w``) or an
    ISO 8601 date or date-time (UTC if no offset is given)."""
    text = text.strip()
    match = _DURATION_RE.fullmatch(text)
    if match:
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds == 0:
            raise CliError(f"--expires {text!r}: the duration must be longer than zero")
        return int(now) + seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"--expires {text!r}: expected a duration like 30d, 12h, 90m, 2w or an ISO date like 2030-01-31"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    expires = int(moment.timestamp())
    if expires <= now:
        raise CliError(f"--expires {text!r} is in the past")
    return expires
