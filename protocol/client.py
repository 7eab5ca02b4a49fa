"""The client side of one SecAgg+ attempt (Bonawitz et al. 2017; Bell et al. 2020), sans I/O.

Phases, each ended by one message from the coordinator named for this attempt:

    invite      ── Invite ──────────▶ send AdvertiseKeys (fresh c_u, s_u, b_u for this attempt)
    advertise   ── KeyBundle ───────▶ send EncryptedShares (t-of-(k+1) shares of s_u^SK and b_u)
    share       ── ShareDelivery ───▶ send MaskedInput y_u = x_u + PRG(b_u) ± Σ PRG(k_uv)
    masked      ── SurvivorList ────▶ send ConsistencySignature over U3
    consistency ── UnmaskRequest ───▶ send UnmaskShares, then done

Rules this machine enforces, whatever the coordinator says:
- Only frames from the coordinator, for this exact (job, round, attempt), are accepted.
- Relayed keys and votes carry their original signer's signature and are checked against it.
- For each neighbour w it reveals at most one kind of share, once: the seed share b_w only if w is
  in the signed U3, the key share s_w^SK only if w sent shares (U2) and is not in U3. A request
  naming a survivor as dropped is refused and reported, and nothing is revealed.
- It reveals anything only after t holders of each affected secret signed the same U3, not
  counting the coordinator's own vote: the coordinator is a participant and could sign two lists.
- When its input is unchanged since it was last summed (`same_survivors_as`), it signs only the
  survivor set it was summed with: two sums of one unchanged input over sets that differ by a few
  members give away those members' inputs (their difference).
- It reports `SendingMaskedInput` and `SigningSurvivors` before those frames, so the driver can
  record durably that the round is spent (no other attempt of it gets this input) and which set
  an unchanged input was summed with, before anything leaves.
Any invalid message from the coordinator is raised as `RemoteProtocolError` (for the driver to
log and count) and leaves the machine in ABORTED with its secrets wiped; frames from anyone else
are rejected the same way without changing state.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import nacl.signing
import numpy as np

from protocol import crypto, masking, shamir
from protocol.errors import LocalProtocolError, ParameterError, RemoteProtocolError
from protocol.events import (
    ClientFinished, Output, RoundAborted, Send, SendingMaskedInput, SigningSurvivors, StartTimer,
)
from protocol.graph import NeighbourGraph
from protocol.messages import (
    Abort, AdvertiseKeys, ConsistencySignature, EncryptedShares, Invite, KeyBundle, MaskedInput,
    ShareDelivery, SurvivorList, UnmaskRequest, UnmaskShares,
)
from protocol.params import RoundParams
from protocol.wire import Envelope, RoundContext, decode, encode


class ClientPhase(Enum):
    INVITE = "invite"
    ADVERTISE = "advertise"
    SHARE = "share"
    MASKED = "masked"
    CONSISTENCY = "consistency"
    DONE = "done"
    ABORTED = "aborted"


class ClientRound:
    """One client in one attempt. Build a new one per attempt: keys are never carried over."""

    def __init__(
        self,
        context: RoundContext,
        signing_key: nacl.signing.SigningKey,
        coordinator: bytes,
        vector: np.ndarray,
        random_bytes: crypto.RandomBytes,
        is_member: Callable[[bytes], bool] = lambda _member: True,
        invite_timeout: float = 30.0,
        same_survivors_as: bytes | None = None,
    ) -> None:
        if vector.dtype != np.uint32 or vector.ndim != 1:
            raise LocalProtocolError(f"input must be a 1-d uint32 vector, got {vector.dtype} {vector.shape}")
        self.context = context
        self.me = crypto.member_id_of(signing_key)
        self.coordinator = coordinator
        self.phase = ClientPhase.INVITE
        self._ctx = context.encode()
        self._signing_key = signing_key
        self._vector = vector
        self._random = random_bytes
        self._is_member = is_member
        self._invite_timeout = invite_timeout
        self._same_survivors_as = same_survivors_as  # masking.member_set_digest of an earlier U3, or None
        self._params: RoundParams | None = None
        self._graph: NeighbourGraph | None = None
        self._channel_secret = b""
        self._mask_secret = b""
        self._seed = b""
        self._my_advert = b""
        self._peer_keys: dict[bytes, AdvertiseKeys] = {}  # U1 ∩ N(me)
        self._own_shares: tuple[int, int] = (0, 0)  # (mask-key share, seed share) at my own x
        self._held: dict[bytes, tuple[int, int]] = {}  # U2 ∩ N(me): shares they gave me
        self._survivors: frozenset[bytes] = frozenset()
        self._survivors_digest = b""

    # --- driver interface ---------------------------------------------------------------------

    def start(self, now: float) -> list[Output]:
        return [StartTimer(ClientPhase.INVITE.value, self._invite_timeout)]

    def receive(self, frame: bytes, now: float) -> list[Output]:
        if self.phase in (ClientPhase.DONE, ClientPhase.ABORTED):
            return []
        envelope = decode(frame)
        if envelope.sender != self.coordinator:
            raise RemoteProtocolError(envelope.sender, self.phase.value, "only this attempt's coordinator may drive the client")
        try:
            if envelope.context != self.context:
                raise RemoteProtocolError(self.coordinator, self.phase.value, f"message for {envelope.context}, expected {self.context}")
            return self._dispatch(envelope)
        except _Shortfall as shortfall:  # too few peers left: a normal outcome, not the coordinator's fault
            self._wipe()
            self.phase = ClientPhase.ABORTED
            return [RoundAborted(self.context, shortfall.phase, shortfall.reason)]
        except RemoteProtocolError:
            self._wipe()
            self.phase = ClientPhase.ABORTED
            raise

    def timer_fired(self, name: str, now: float) -> list[Output]:
        if name != self.phase.value or self.phase in (ClientPhase.DONE, ClientPhase.ABORTED):
            return []
        self._wipe()
        phase, self.phase = self.phase, ClientPhase.ABORTED
        return [RoundAborted(self.context, phase.value, "coordinator silent past the phase timeout")]

    # --- phases ---------------------------------------------------------------------------------

    def _dispatch(self, envelope: Envelope) -> list[Output]:
        message = envelope.message
        if isinstance(message, Abort):
            self._wipe()
            phase, self.phase = self.phase, ClientPhase.ABORTED
            return [RoundAborted(self.context, phase.value, f"coordinator aborted: {message.reason}")]
        handlers: dict[ClientPhase, tuple[type, Callable[..., list[Output]]]] = {
            ClientPhase.INVITE: (Invite, self._on_invite),
            ClientPhase.ADVERTISE: (KeyBundle, self._on_keys),
            ClientPhase.SHARE: (ShareDelivery, self._on_delivery),
            ClientPhase.MASKED: (SurvivorList, self._on_survivors),
            ClientPhase.CONSISTENCY: (UnmaskRequest, self._on_unmask_request),
        }
        expected, handler = handlers[self.phase]
        if not isinstance(message, expected):
            raise RemoteProtocolError(self.coordinator, self.phase.value, f"unexpected {message.KIND} message")
        return handler(message)

    def _on_invite(self, invite: Invite) -> list[Output]:
        params = invite.params
        try:
            params.check_for(len(invite.participants))
        except ParameterError as exc:
            raise RemoteProtocolError(self.coordinator, "invite", f"unsafe parameters: {exc}") from None
        if self.me not in invite.participants:
            raise RemoteProtocolError(self.coordinator, "invite", "this node is not in the participant list")
        strangers = [p for p in invite.participants if not self._is_member(p)]
        if strangers:
            raise RemoteProtocolError(self.coordinator, "invite", f"{len(strangers)} invited participants are not members")
        if params.dimension != len(self._vector):
            raise RemoteProtocolError(self.coordinator, "invite", f"dimension {params.dimension} but our input has {len(self._vector)}")
        if params.bits < 32 and int(self._vector.max(initial=0)) >> params.bits:
            raise LocalProtocolError(f"input words exceed the {params.bits}-bit modulus")
        self._params = params
        self._graph = NeighbourGraph(invite.participants, params.neighbours, self._ctx)
        self._channel_secret, channel_public = crypto.x25519_keypair(self._random)
        self._mask_secret, mask_public = crypto.x25519_keypair(self._random)
        self._seed = self._random(32)
        advert = AdvertiseKeys(channel_public, mask_public, masking.seed_commitment(self._ctx, self._seed))
        self._my_advert = encode(self.context, advert, self._signing_key)
        return self._advance(ClientPhase.ADVERTISE, self._my_advert)

    def _on_keys(self, bundle: KeyBundle) -> list[Output]:
        params, graph = self._require()
        neighbours = graph.neighbours(self.me)
        own_echoed = False
        seen_keys: set[bytes] = set()
        for frame in bundle.adverts:
            advert = self._relayed(frame, "advertise")
            sender, keys = advert.sender, advert.message
            assert isinstance(keys, AdvertiseKeys)
            if sender == self.me:
                own_echoed = frame == self._my_advert
                continue
            if sender not in neighbours or sender in self._peer_keys:
                raise RemoteProtocolError(self.coordinator, "advertise", "key bundle holds a non-neighbour or a repeated sender")
            if keys.channel_key == keys.mask_key or {keys.channel_key, keys.mask_key} & seen_keys:
                raise RemoteProtocolError(sender, "advertise", "public keys are not distinct")
            seen_keys.update((keys.channel_key, keys.mask_key))
            self._peer_keys[sender] = keys
        if not own_echoed:
            raise RemoteProtocolError(self.coordinator, "advertise", "our own keys were not echoed unchanged")
        self._need(len(self._peer_keys) + 1, "advertise", "live neighbours after key exchange")
        holders = graph.holders(self.me)
        xs = [graph.x_of(self.me, h) for h in holders]
        key_shares = shamir.split(self._mask_secret, xs, params.threshold, self._random)
        seed_shares = shamir.split(self._seed, xs, params.threshold, self._random)
        sealed = []
        for holder, key_share, seed_share in zip(holders, key_shares, seed_shares):
            if holder == self.me:
                self._own_shares = (key_share, seed_share)
            elif holder in self._peer_keys:
                shared = crypto.x25519(self._channel_secret, self._peer_keys[holder].channel_key, holder, "share")
                key = masking.channel_key(shared, self._ctx, self.me, holder)
                plaintext = shamir.encode_share(key_share) + shamir.encode_share(seed_share)
                sealed.append((holder, crypto.seal(key, plaintext, masking.channel_aad(self._ctx, self.me, holder))))
        frame = encode(self.context, EncryptedShares(tuple(sealed)), self._signing_key)
        return self._advance(ClientPhase.SHARE, frame)

    def _on_delivery(self, delivery: ShareDelivery) -> list[Output]:
        params, _ = self._require()
        for sender, ciphertext in delivery.shares:
            keys = self._peer_keys.get(sender)
            if keys is None:
                raise RemoteProtocolError(self.coordinator, "share", "delivered shares from a peer outside our live neighbours")
            shared = crypto.x25519(self._channel_secret, keys.channel_key, sender, "share")
            key = masking.channel_key(shared, self._ctx, sender, self.me)
            plaintext = crypto.open_sealed(key, ciphertext, masking.channel_aad(self._ctx, sender, self.me), sender, "share")
            try:
                self._held[sender] = (shamir.decode_share(plaintext[: shamir.SHARE_BYTES]),
                                      shamir.decode_share(plaintext[shamir.SHARE_BYTES :]))
            except ValueError as exc:  # authentic but malformed: the sender's fault, not ours
                raise RemoteProtocolError(sender, "share", f"bad Shamir share: {exc}") from None
        self._need(len(self._held) + 1, "share", "neighbours that shared their keys")
        y = self._vector.copy()
        if params.masked:
            self._add_masks(y, params)
        if params.bits < 32:
            np.bitwise_and(y, np.uint32(params.modulus_mask), out=y)
        # The secrets are in the shares now; this node no longer needs them.
        self._mask_secret = self._seed = self._channel_secret = b""
        frame = encode(self.context, MaskedInput(y.astype("<u4").tobytes()), self._signing_key)
        return [SendingMaskedInput(self.context), *self._advance(ClientPhase.MASKED, frame)]

    def _add_masks(self, y: np.ndarray, params: RoundParams) -> None:
        masking.add_mask(y, masking.self_seed(self._seed, self._ctx, params.dimension, params.bits), positive=True)
        for peer in sorted(self._held):
            shared = crypto.x25519(self._mask_secret, self._peer_keys[peer].mask_key, peer, "masked")
            seed = masking.pairwise_seed(
                shared, self._ctx, self.me, crypto.x25519_public(self._mask_secret), peer, self._peer_keys[peer].mask_key,
                params.dimension, params.bits,
            )
            masking.add_mask(y, seed, positive=masking.adds_pairwise_mask(self.me, peer))

    def _on_survivors(self, survivors: SurvivorList) -> list[Output]:
        params, graph = self._require()
        u3 = frozenset(survivors.survivors)
        if self.me not in u3:
            raise RemoteProtocolError(self.coordinator, "masked", "survivor list omits this node, which sent its input")
        if not u3 <= frozenset(graph.participants):
            raise RemoteProtocolError(self.coordinator, "masked", "survivor list names non-participants")
        live_neighbours = u3 & graph.neighbours(self.me)
        if not live_neighbours <= self._held.keys():
            raise RemoteProtocolError(self.coordinator, "masked", "survivor list names a neighbour that never shared keys (U3 ⊄ U2)")
        if len(u3) < params.min_survivors:
            raise RemoteProtocolError(self.coordinator, "masked", f"{len(u3)} survivors < min_survivors {params.min_survivors}")
        self._need(len(live_neighbours) + 1, "masked", "surviving neighbours")
        if self._same_survivors_as is not None and masking.member_set_digest(u3) != self._same_survivors_as:
            raise _Shortfall("masked", "this node's input is unchanged since it was summed with a different "
                                       "survivor set; a second sum over another set would give away the difference")
        self._survivors = u3
        self._survivors_digest = masking.survivors_digest(self._ctx, survivors.survivors)
        frame = encode(self.context, ConsistencySignature(self._survivors_digest), self._signing_key)
        return [SigningSurvivors(self.context, u3), *self._advance(ClientPhase.CONSISTENCY, frame)]

    def _on_unmask_request(self, request: UnmaskRequest) -> list[Output]:
        params, graph = self._require()
        dropped = frozenset(request.dropped)
        both = dropped & self._survivors
        if both:
            raise RemoteProtocolError(
                self.coordinator, "consistency",
                f"asked for both shares of {len(both)} survivors (listed as dropped and in the signed U3); refused",
            )
        if self.me in dropped:
            raise RemoteProtocolError(self.coordinator, "consistency", "request names this node as dropped")
        if not dropped <= self._held.keys():
            raise RemoteProtocolError(self.coordinator, "consistency", "request names as dropped a peer that never shared keys with us")
        signers: set[bytes] = set()
        for frame in request.signatures:
            vote = self._relayed(frame, "consistency")
            assert isinstance(vote.message, ConsistencySignature)
            if vote.sender not in self._survivors or vote.message.survivors_digest != self._survivors_digest:
                raise RemoteProtocolError(vote.sender, "consistency", "vote for a different survivor set")
            signers.add(vote.sender)
        signers.discard(self.coordinator)  # it could have signed another list for other holders
        seed_owners = sorted((self._survivors & self._held.keys()) | {self.me})
        for owner in seed_owners + sorted(dropped):
            quorum = len(signers & set(graph.holders(owner)))
            if quorum < params.threshold:
                raise RemoteProtocolError(
                    self.coordinator, "consistency",
                    f"only {quorum} holders of a secret signed U3 (threshold {params.threshold}); nothing revealed",
                )
        shares_of = lambda owner: self._own_shares if owner == self.me else self._held[owner]  # noqa: E731
        seeds = tuple((o, shamir.encode_share(shares_of(o)[1])) for o in seed_owners)
        keys = tuple((o, shamir.encode_share(self._held[o][0])) for o in sorted(dropped))
        self._wipe()
        self.phase = ClientPhase.DONE
        frame = encode(self.context, UnmaskShares(seeds, keys), self._signing_key)
        return [Send(self.coordinator, frame), ClientFinished(self.context)]

    # --- helpers --------------------------------------------------------------------------------

    def _advance(self, phase: ClientPhase, frame: bytes) -> list[Output]:
        params, _ = self._require()
        self.phase = phase
        return [Send(self.coordinator, frame), StartTimer(phase.value, params.phase_timeout)]

    def _relayed(self, frame: bytes, kind: str) -> Envelope:
        inner = decode(frame)
        if inner.context != self.context or inner.message.KIND != kind:
            raise RemoteProtocolError(inner.sender, kind, f"relayed frame is not a {kind} message of this attempt")
        if not self._is_member(inner.sender):
            raise RemoteProtocolError(inner.sender, kind, "relayed frame signed by a non-member")
        return inner

    def _need(self, count: int, phase: str, what: str) -> None:
        params, _ = self._require()
        if count < params.threshold:
            raise _Shortfall(phase, f"only {count} {what}, below threshold {params.threshold}")

    def _require(self) -> tuple[RoundParams, NeighbourGraph]:
        if self._params is None or self._graph is None:
            raise LocalProtocolError("the client has not been invited yet")
        return self._params, self._graph

    def _wipe(self) -> None:
        """Drop every secret of this attempt; it must never be used again."""
        self._mask_secret = self._seed = self._channel_secret = b""
        self._own_shares = (0, 0)
        self._held = {}


class _Shortfall(Exception):
    """Internal: fewer than t peers left; unwinds into a clean `RoundAborted` (errors.py: counts below t are events)."""

    def __init__(self, phase: str, reason: str) -> None:
        super().__init__(reason)
        self.phase = phase
        self.reason = reason
