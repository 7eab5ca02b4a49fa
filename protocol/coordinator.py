"""The coordinator side of one SecAgg+ attempt, sans I/O. It learns only the sum.

Each phase collects one message kind from the clients still in the round and closes when all of
them have answered or its timer fires; then it checks that the round can still finish and either
moves on or aborts with a reason. The sets follow Bonawitz et al.: U1 advertised keys, U2 sent
shares, U3 sent masked inputs (their inputs are in the sum), U4 signed U3, U5 sent unmasking
shares. Unmasking closes as soon as every needed secret has t shares, so one slow client does
not hold up the round.

Safety checks: rebuilt self-mask seeds must match the commitment signed in AdvertiseKeys and
rebuilt mask keys must match the signed public key, so a bad share gives a clean abort, never a
wrong sum. Feasibility (every needed secret still has t holders alive) is checked before U3 is
announced and again before unmasking is requested, so a doomed round aborts before anyone
reveals a share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import Enum

import nacl.signing
import numpy as np

from protocol import crypto, masking, shamir
from protocol.errors import LocalProtocolError, RemoteProtocolError
from protocol.events import Output, RoundAborted, RoundFinished, RoundResult, Send, StartTimer
from protocol.graph import NeighbourGraph
from protocol.messages import (
    Abort, AdvertiseKeys, ConsistencySignature, EncryptedShares, Invite, KeyBundle, MaskedInput,
    Message, ShareDelivery, SurvivorList, UnmaskRequest, UnmaskShares,
)
from protocol.params import RoundParams
from protocol.wire import RoundContext, decode, encode


class CoordinatorPhase(Enum):
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


_COLLECTS: dict[CoordinatorPhase, type[Message]] = {
    CoordinatorPhase.ADVERTISE: AdvertiseKeys,
    CoordinatorPhase.SHARE: EncryptedShares,
    CoordinatorPhase.MASKED: MaskedInput,
    CoordinatorPhase.CONSISTENCY: ConsistencySignature,
    CoordinatorPhase.UNMASK: UnmaskShares,
}
_ORDER = list(_COLLECTS)


class CoordinatorRound:
    def __init__(
        self,
        context: RoundContext,
        signing_key: nacl.signing.SigningKey,
        participants: Sequence[bytes],
        params: RoundParams,
        is_member: Callable[[bytes], bool] = lambda _member: True,
    ) -> None:
        params.check_for(len(set(participants)))
        strangers = [p for p in participants if not is_member(p)]
        if strangers:
            raise LocalProtocolError(f"{len(strangers)} participants are not members")
        self.context = context
        self.me = crypto.member_id_of(signing_key)
        self.params = params
        self.phase = CoordinatorPhase.ADVERTISE
        self.graph = NeighbourGraph(participants, params.neighbours, context.encode())
        self._participant_set = frozenset(self.graph.participants)
        self._lost: set[bytes] = set()  # participants the driver could not reach: not waited for
        self._ctx = context.encode()
        self._signing_key = signing_key
        self._started: dict[str, float] = {}
        self._phase_seconds: dict[str, float] = {}
        self._adverts: dict[bytes, tuple[bytes, AdvertiseKeys]] = {}  # U1
        self._shares: dict[bytes, dict[bytes, bytes]] = {}  # U2: sender -> recipient -> ciphertext
        self._total = np.zeros(params.dimension, dtype=np.uint32)
        self._inputs: set[bytes] = set()  # U3 while collecting
        self._survivors: tuple[bytes, ...] = ()
        self._dropped_after_sharing: frozenset[bytes] = frozenset()  # U2 \ U3
        self._votes: dict[bytes, bytes] = {}  # U4: signer -> frame
        self._seed_points: dict[bytes, list[tuple[int, int]]] = {}
        self._key_points: dict[bytes, list[tuple[int, int]]] = {}
        self._unmasked_by: set[bytes] = set()  # U5

    @property
    def participants(self) -> tuple[bytes, ...]:
        return self.graph.participants

    # --- driver interface ---------------------------------------------------------------------

    def start(self, now: float) -> list[Output]:
        self._started[CoordinatorPhase.ADVERTISE.value] = now
        invite = encode(self.context, Invite(self.participants, self.params), self._signing_key)
        return [Send(p, invite) for p in self.participants] + [StartTimer("advertise", self.params.phase_timeout)]

    def receive(self, frame: bytes, now: float) -> list[Output]:
        """Take one client message. A bad one raises `RemoteProtocolError` and changes nothing."""
        if self.phase in (CoordinatorPhase.DONE, CoordinatorPhase.ABORTED):
            return []
        envelope = decode(frame, max_bytes=4 * self.params.dimension + 64 * 1024)
        sender, message = envelope.sender, envelope.message
        if envelope.context != self.context:
            raise RemoteProtocolError(sender, message.KIND, f"message for {envelope.context}, expected {self.context}")
        if sender not in self._participant_set:
            raise RemoteProtocolError(sender, message.KIND, "sender is not a participant of this attempt")
        expected = _COLLECTS[self.phase]
        if not isinstance(message, expected):
            kinds = [c.KIND for c in _COLLECTS.values()]
            if message.KIND in kinds and kinds.index(message.KIND) < _ORDER.index(self.phase):
                return []  # a straggler's answer to a phase that has closed: harmless
            raise RemoteProtocolError(sender, message.KIND, f"unexpected in phase {self.phase.value}")
        return self._collect(sender, message, frame, now)

    def timer_fired(self, name: str, now: float) -> list[Output]:
        if name != self.phase.value or self.phase in (CoordinatorPhase.DONE, CoordinatorPhase.ABORTED):
            return []
        return self._close(now)

    def peer_lost(self, peer: bytes, now: float) -> list[Output]:
        """The driver could not deliver to `peer` (or it refused): stop waiting for it. The phase closes
        as soon as everyone else still expected has answered, instead of at its timeout; this is what
        the timeout would have done later, so it changes when a phase closes, never what it accepts."""
        if self.phase in (CoordinatorPhase.DONE, CoordinatorPhase.ABORTED) or peer not in self._participant_set:
            return []
        self._lost.add(peer)
        return self._close(now) if self._phase_complete() else []

    # --- collecting -------------------------------------------------------------------------------

    def _collect(self, sender: bytes, message: Message, frame: bytes, now: float) -> list[Output]:
        phase = self.phase.value
        if isinstance(message, AdvertiseKeys):
            self._check_once(sender, self._adverts, phase)
            keys = {message.channel_key, message.mask_key}
            if len(keys) < 2 or any(keys & {a.channel_key, a.mask_key} for _, a in self._adverts.values()):
                raise RemoteProtocolError(sender, phase, "public keys repeat this or another client's keys")
            self._adverts[sender] = (frame, message)
        elif isinstance(message, EncryptedShares):
            self._check_in(sender, self._adverts, phase)
            self._check_once(sender, self._shares, phase)
            expected = sorted(self.graph.neighbours(sender) & self._adverts.keys())
            if [who for who, _ in message.shares] != expected:
                raise RemoteProtocolError(sender, phase, "shares are not addressed to exactly its live neighbours")
            self._shares[sender] = dict(message.shares)
        elif isinstance(message, MaskedInput):
            self._check_in(sender, self._shares, phase)
            self._check_once(sender, self._inputs, phase)
            if len(message.vector) != 4 * self.params.dimension:
                raise RemoteProtocolError(sender, phase, f"masked input of {len(message.vector) // 4} words, expected {self.params.dimension}")
            vector = np.frombuffer(message.vector, dtype="<u4")
            if self.params.bits < 32 and int(vector.max(initial=0)) >> self.params.bits:
                raise RemoteProtocolError(sender, phase, f"masked input has words beyond {self.params.bits} bits")
            np.add(self._total, vector, out=self._total)
            self._inputs.add(sender)
        elif isinstance(message, ConsistencySignature):
            self._check_in(sender, self._survivors, phase)
            self._check_once(sender, self._votes, phase)
            if message.survivors_digest != masking.survivors_digest(self._ctx, self._survivors):
                raise RemoteProtocolError(sender, phase, "signed a different survivor set")
            self._votes[sender] = frame
        else:
            assert isinstance(message, UnmaskShares)
            self._take_unmask_shares(sender, message)
        return self._close(now) if self._phase_complete() else []

    def _phase_complete(self) -> bool:
        """Every client still expected in this phase (answered the last one, not lost) has answered."""
        if self.phase is CoordinatorPhase.ADVERTISE:
            expected, answered = self._participant_set, self._adverts.keys()
        elif self.phase is CoordinatorPhase.SHARE:
            expected, answered = self._adverts.keys(), self._shares.keys()
        elif self.phase is CoordinatorPhase.MASKED:
            expected, answered = self._shares.keys(), self._inputs
        elif self.phase is CoordinatorPhase.CONSISTENCY:
            expected, answered = set(self._survivors), self._votes.keys()
        elif self.phase is CoordinatorPhase.UNMASK:
            if self._all_secrets_recoverable(self._unmasked_by, enough_points=True):
                return True
            expected, answered = self._votes.keys(), self._unmasked_by
        else:
            return False
        return all(who in answered or who in self._lost for who in expected)

    def _take_unmask_shares(self, sender: bytes, message: UnmaskShares) -> None:
        phase = "unmask"
        self._check_in(sender, self._votes, phase)
        self._check_once(sender, self._unmasked_by, phase)
        holders_of = set(self.graph.holders(sender))
        expected_seeds = sorted(set(self._survivors) & holders_of)
        expected_keys = sorted(self._dropped_after_sharing & holders_of)
        if [o for o, _ in message.seed_shares] != expected_seeds or [o for o, _ in message.key_shares] != expected_keys:
            raise RemoteProtocolError(sender, phase, "unmasking shares do not match what was requested")
        try:
            seeds = [(o, shamir.decode_share(s)) for o, s in message.seed_shares]
            keys = [(o, shamir.decode_share(s)) for o, s in message.key_shares]
        except ValueError as exc:
            raise RemoteProtocolError(sender, phase, str(exc)) from None
        for owner, y in seeds:
            self._seed_points.setdefault(owner, []).append((self.graph.x_of(owner, sender), y))
        for owner, y in keys:
            self._key_points.setdefault(owner, []).append((self.graph.x_of(owner, sender), y))
        self._unmasked_by.add(sender)

    # --- closing phases ---------------------------------------------------------------------------

    def _close(self, now: float) -> list[Output]:
        phase = self.phase
        self._phase_seconds[phase.value] = now - self._started[phase.value]
        closers = {
            CoordinatorPhase.ADVERTISE: self._close_advertise,
            CoordinatorPhase.SHARE: self._close_share,
            CoordinatorPhase.MASKED: self._close_masked,
            CoordinatorPhase.CONSISTENCY: self._close_consistency,
            CoordinatorPhase.UNMASK: self._close_unmask,
        }
        try:
            return closers[phase](now)
        except _Abort as abort:
            return self._abort(phase.value, str(abort))

    def _close_advertise(self, now: float) -> list[Output]:
        u1 = self._adverts.keys()
        self._require_survivors(len(u1), "advertised keys")
        out: list[Output] = []
        for u in sorted(u1):
            frames = tuple(self._adverts[v][0] for v in sorted((self.graph.neighbours(u) | {u}) & u1))
            out.append(Send(u, encode(self.context, KeyBundle(frames), self._signing_key)))
        return out + self._enter(CoordinatorPhase.SHARE, now)

    def _close_share(self, now: float) -> list[Output]:
        u2 = self._shares.keys()
        self._require_survivors(len(u2), "shared their keys")
        out: list[Output] = []
        for v in sorted(u2):
            delivered = tuple((u, self._shares[u][v]) for u in sorted(self.graph.neighbours(v) & u2))
            out.append(Send(v, encode(self.context, ShareDelivery(delivered), self._signing_key)))
        return out + self._enter(CoordinatorPhase.MASKED, now)

    def _close_masked(self, now: float) -> list[Output]:
        self._survivors = tuple(sorted(self._inputs))
        self._dropped_after_sharing = frozenset(self._shares.keys() - self._inputs)
        self._require_survivors(len(self._survivors), "sent masked inputs")
        self._require_recoverable(set(self._survivors), "after masked input")
        frame = encode(self.context, SurvivorList(self._survivors), self._signing_key)
        return [Send(u, frame) for u in self._survivors] + self._enter(CoordinatorPhase.CONSISTENCY, now)

    def _close_consistency(self, now: float) -> list[Output]:
        voters = set(self._votes)
        # Clients never count this coordinator's own vote (it could sign two lists), so neither do we.
        self._require_recoverable(voters - {self.me}, "after the consistency check")
        out: list[Output] = []
        for u in sorted(voters):
            signatures = tuple(self._votes[v] for v in sorted(self.graph.two_hop(u) & voters))
            dropped = tuple(sorted(self._dropped_after_sharing & self.graph.neighbours(u)))
            out.append(Send(u, encode(self.context, UnmaskRequest(signatures, dropped), self._signing_key)))
        return out + self._enter(CoordinatorPhase.UNMASK, now)

    def _close_unmask(self, now: float) -> list[Output]:
        if not self._all_secrets_recoverable(self._unmasked_by, enough_points=True):
            raise _Abort(f"too few unmasking shares: {len(self._unmasked_by)} clients answered")
        aggregate = self._unmask()
        self.phase = CoordinatorPhase.DONE
        result = RoundResult(
            context=self.context,
            coordinator=self.me,
            aggregate=aggregate,
            survivors=self._survivors,
            dropped=tuple(sorted(self._participant_set - set(self._survivors))),
            phase_seconds=dict(self._phase_seconds),
            participants=self.participants,
            votes=tuple(self._votes[v] for v in sorted(self._votes)),
        )
        return [RoundFinished(result)]

    def _unmask(self) -> np.ndarray:
        z = self._total.copy()
        if self.params.masked:  # a plain sum has no masks to take off
            self._remove_masks(z)
        if self.params.bits < 32:
            np.bitwise_and(z, np.uint32(self.params.modulus_mask), out=z)
        return z

    def _remove_masks(self, z: np.ndarray) -> None:
        params, t = self.params, self.params.threshold
        for w in self._survivors:
            seed = self._rebuild(self._seed_points[w][:t], w, "self-mask seed")
            if masking.seed_commitment(self._ctx, seed) != self._adverts[w][1].seed_commitment:
                raise _Abort(f"rebuilt self-mask seed of {w.hex()[:16]} does not match its commitment (a holder sent a bad share)")
            masking.add_mask(z, masking.self_seed(seed, self._ctx, params.dimension, params.bits), positive=False)
        survivors = set(self._survivors)
        for w in sorted(self._dropped_after_sharing):
            secret = self._rebuild(self._key_points[w][:t], w, "mask key")
            w_public = self._adverts[w][1].mask_key
            if crypto.x25519_public(secret) != w_public:
                raise _Abort(f"rebuilt mask key of {w.hex()[:16]} does not match its public key (a holder sent a bad share)")
            for v in sorted(self.graph.neighbours(w) & survivors):
                v_public = self._adverts[v][1].mask_key
                shared = crypto.x25519(secret, v_public, v, "unmask")
                seed = masking.pairwise_seed(shared, self._ctx, w, w_public, v, v_public, params.dimension, params.bits)
                masking.add_mask(z, seed, positive=not masking.adds_pairwise_mask(v, w))

    # --- checks and transitions -------------------------------------------------------------------

    def _enter(self, phase: CoordinatorPhase, now: float) -> list[Output]:
        self.phase = phase
        self._started[phase.value] = now
        return [StartTimer(phase.value, self.params.phase_timeout)]

    def _abort(self, phase: str, reason: str) -> list[Output]:
        self.phase = CoordinatorPhase.ABORTED
        frame = encode(self.context, Abort(reason[:500]), self._signing_key)
        return [Send(p, frame) for p in self.participants] + [RoundAborted(self.context, phase, reason)]

    def _require_survivors(self, count: int, what: str) -> None:
        if count < self.params.min_survivors:
            raise _Abort(f"only {count} clients {what}, below min_survivors {self.params.min_survivors}")

    def _require_recoverable(self, alive: set[bytes], when: str) -> None:
        if not self._all_secrets_recoverable(alive, enough_points=False):
            raise _Abort(f"fewer than t={self.params.threshold} live holders for some needed secret {when}")

    def _all_secrets_recoverable(self, holders_alive: set[bytes], enough_points: bool) -> bool:
        """Every survivor's seed and every dropped sharer's key has t holders (or t shares in hand)."""
        t = self.params.threshold
        if enough_points:
            return all(len(self._seed_points.get(w, ())) >= t for w in self._survivors) and all(
                len(self._key_points.get(w, ())) >= t for w in self._dropped_after_sharing
            )
        needed = list(self._survivors) + list(self._dropped_after_sharing)
        return all(len(holders_alive & set(self.graph.holders(w))) >= t for w in needed)

    def _rebuild(self, points: list[tuple[int, int]], owner: bytes, what: str) -> bytes:
        try:
            return shamir.combine(points)
        except LocalProtocolError as exc:
            raise _Abort(f"cannot rebuild the {what} of {owner.hex()[:16]}: {exc}") from None

    @staticmethod
    def _check_once(sender: bytes, seen: object, phase: str) -> None:
        if sender in seen:  # type: ignore[operator]
            raise RemoteProtocolError(sender, phase, "repeated message")

    @staticmethod
    def _check_in(sender: bytes, earlier: object, phase: str) -> None:
        if sender not in earlier:  # type: ignore[operator]
            raise RemoteProtocolError(sender, phase, "sender dropped out of an earlier phase")


class _Abort(Exception):
    """Internal: unwinds a phase closer into a clean `RoundAborted`."""
