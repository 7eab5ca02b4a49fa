"""The SecAgg+ neighbour graph (Bell et al. 2020): a k-regular Harary graph on a permuted ring.

Every node computes the same graph with no messages: the ring order is a Fisher–Yates shuffle of
the sorted participant list driven by a PRG keyed with H(context ‖ participants). The participant
list is fixed in the coordinator's signed invitation before any round key exists, so the
coordinator cannot re-draw the graph after seeing keys; it could only re-invite a different set,
which starts a new attempt with fresh keys. Each node pairs with the k/2 ring positions before
and after it; k >= n-1 gives the complete graph of classic SecAgg.

The holders of client w's secrets are w and its neighbours, in sorted order; holder number i
evaluates w's sharing polynomial at x = i + 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.crypto import keystream, sha256


class NeighbourGraph:
    def __init__(self, participants: Sequence[bytes], neighbours: int, context: bytes) -> None:
        ordered = sorted(participants)
        if len(set(ordered)) != len(ordered):
            raise ValueError("duplicate participant ids")
        self.participants: tuple[bytes, ...] = tuple(ordered)
        self.k = min(neighbours, len(ordered) - 1)
        self._ring = _shuffle(ordered, sha256(b"village/graph/v1", context, *ordered))
        self._position = {member: i for i, member in enumerate(self._ring)}
        # Built on demand: a client needs only its own two-hop neighbourhood, not all n nodes.
        self._neighbours: dict[bytes, frozenset[bytes]] = {}
        self._holders: dict[bytes, tuple[bytes, ...]] = {}
        self._holder_index: dict[bytes, dict[bytes, int]] = {}

    def neighbours(self, member: bytes) -> frozenset[bytes]:
        found = self._neighbours.get(member)
        if found is None:
            n, half, i = len(self._ring), self.k // 2, self._position[member]
            if self.k >= n - 1:
                found = frozenset(self._ring[:i] + self._ring[i + 1 :])
            else:
                found = frozenset(self._ring[(i + off) % n] for off in range(-half, half + 1) if off)
            self._neighbours[member] = found
        return found

    def holders(self, owner: bytes) -> tuple[bytes, ...]:
        """Sorted holders of `owner`'s shares (owner included)."""
        found = self._holders.get(owner)
        if found is None:
            found = self._holders[owner] = tuple(sorted(self.neighbours(owner) | {owner}))
            self._holder_index[owner] = {h: i for i, h in enumerate(found)}
        return found

    def x_of(self, owner: bytes, holder: bytes) -> int:
        """The x-coordinate at which `holder` holds `owner`'s shares."""
        self.holders(owner)
        return self._holder_index[owner][holder] + 1

    def two_hop(self, member: bytes) -> frozenset[bytes]:
        """Every holder of every secret `member` holds: whose consistency signatures it checks."""
        out: set[bytes] = set()
        for owner in self.holders(member):
            out.update(self.holders(owner))
        return frozenset(out)


def _shuffle(items: list[bytes], seed: bytes) -> list[bytes]:
    """Fisher–Yates with unbiased draws (rejection sampling) from an AES-CTR stream."""
    out = list(items)
    stream = memoryview(keystream(seed, 16 * max(len(out), 1) + 4096))
    offset, refills = 0, 0
    for i in range(len(out) - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - ((1 << 64) % bound)
        while True:
            if offset + 8 > len(stream):  # practically never: rejections are rare
                refills += 1
                stream = memoryview(keystream(sha256(seed, refills.to_bytes(8, "big")), 4096))
                offset = 0
            draw = int.from_bytes(stream[offset : offset + 8], "big")
            offset += 8
            if draw < limit:
                break
        j = draw % bound
        out[i], out[j] = out[j], out[i]
    return out
