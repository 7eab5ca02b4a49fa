"""Fixed-point encoding of float vectors into Z_(2^m), and back.

Each coordinate is clipped to [-clip, clip], multiplied by `scale` and rounded to an integer:
stochastically (floor + Bernoulli(fraction): unbiased, error < 1 step, variance <= 1/4) or to the
nearest integer (error <= 1/2 step, biased on repeated values). Integers are stored modulo 2^m in
two's complement; the sum of n clients is read back as a signed integer and divided by `scale`.

Error bound of a dequantized sum of n clients, per coordinate, against the sum of the *clipped*
inputs: < n / scale (stochastic) or <= n / (2 scale) (nearest). No wrap-around is possible when
max_clients * ceil(clip * scale) < 2^(m-1); a configuration that breaks this is rejected.
With distributed DP noise (protocol/dp.py) the summed noise's tail counts too:
max_clients * ceil(clip * scale) + K_SIGMA * noise_std < 2^(m-1), noise_std the std of the
noise all max_clients add together (integer units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from protocol.crypto import expand_mask
from protocol.errors import ParameterError

Rounding = Literal["stochastic", "nearest"]
#: Standard deviations of summed DP noise kept free below 2^(m-1) (notes §5: k_sigma ~ 4, so a
#: wrap needs a > 4 sigma noise excursion on top of every client at +-clip).
K_SIGMA = 4.0


@dataclass(frozen=True, slots=True)
class Quantizer:
    clip: float
    scale: float
    max_clients: int
    bits: int = 32
    rounding: Rounding = "stochastic"
    noise_std: float = 0.0  # std of the summed DP noise of max_clients clients, integer units

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, float) and math.isfinite(self.clip) and self.clip > 0):
            raise ParameterError("clip", f"must be a positive finite number, got {self.clip!r}")
        if not (isinstance(self.scale, float) and math.isfinite(self.scale) and self.scale > 0):
            raise ParameterError("scale", f"must be a positive finite number, got {self.scale!r}")
        if type(self.max_clients) is not int or self.max_clients < 1:
            raise ParameterError("max_clients", f"must be a positive integer, got {self.max_clients!r}")
        if type(self.bits) is not int or not 2 <= self.bits <= 32:
            raise ParameterError("bits", f"must be an integer in [2, 32], got {self.bits!r}")
        if self.rounding not in ("stochastic", "nearest"):
            raise ParameterError("rounding", f"must be 'stochastic' or 'nearest', got {self.rounding!r}")
        if not (isinstance(self.noise_std, float) and math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ParameterError("noise_std", f"must be a non-negative finite number, got {self.noise_std!r}")
        worst = self.max_clients * self.max_step
        if self.noise_std > 0 and worst + K_SIGMA * self.noise_std >= 1 << (self.bits - 1):
            raise ParameterError(
                "scale",
                f"{self.max_clients} clients x ceil(clip x scale) = {worst} plus {K_SIGMA:g} x noise std "
                f"{self.noise_std:g} overflows the signed range of Z_(2^{self.bits}); lower the scale",
            )
        if worst >= 1 << (self.bits - 1):
            raise ParameterError(
                "scale",
                f"{self.max_clients} clients x ceil(clip {self.clip:g} x scale {self.scale:g}) = {worst} "
                f"overflows the signed range of Z_(2^{self.bits}) (< {1 << (self.bits - 1)}); "
                f"lower scale to at most {self.largest_scale(self.clip, self.max_clients, self.bits):g}",
            )

    @staticmethod
    def largest_scale(clip: float, max_clients: int, bits: int = 32) -> float:
        """The finest scale whose worst-case sum of `max_clients` still fits without wrapping."""
        if not (isinstance(clip, float) and math.isfinite(clip) and clip > 0):
            raise ParameterError("clip", f"must be a positive finite number, got {clip!r}")
        if type(bits) is not int or not 2 <= bits <= 32:
            raise ParameterError("bits", f"must be an integer in [2, 32], got {bits!r}")
        if type(max_clients) is not int or max_clients < 1:
            raise ParameterError("max_clients", f"must be a positive integer, got {max_clients!r}")
        steps = ((1 << (bits - 1)) - 1) // max_clients
        if steps < 1:
            raise ParameterError("max_clients", f"{max_clients} clients cannot be summed in Z_(2^{bits}) without wrapping")
        scale = steps / clip
        while math.ceil(clip * scale) > steps:  # float rounding may push clip * scale just above steps
            scale = math.nextafter(scale, 0.0)
        return scale

    @classmethod
    def for_range(cls, clip: float, max_clients: int, bits: int = 32, rounding: Rounding = "stochastic") -> Quantizer:
        return cls(clip, cls.largest_scale(clip, max_clients, bits), max_clients, bits, rounding)

    @property
    def max_step(self) -> int:
        """The largest magnitude one client's quantized coordinate can take."""
        return math.ceil(self.clip * self.scale)

    def error_bound(self, clients: int) -> float:
        """Worst-case per-coordinate error of a dequantized sum of `clients` inputs (clipping aside)."""
        return clients / self.scale if self.rounding == "stochastic" else clients / (2 * self.scale)

    def quantize(self, values: np.ndarray, rounding_seed: bytes | None = None) -> np.ndarray:
        """uint32 words mod 2^m. Stochastic rounding draws its coins from a 32-byte seed (CSPRNG)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise ParameterError("values", f"expected a 1-d vector, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ParameterError("values", f"{int(np.count_nonzero(~np.isfinite(x)))} coordinates are NaN or infinite")
        scaled = np.clip(x, -self.clip, self.clip) * self.scale
        low = np.floor(scaled)
        if self.rounding == "stochastic":
            if rounding_seed is None:
                raise ParameterError("rounding_seed", "stochastic rounding needs 32 random bytes")
            coins = expand_mask(rounding_seed, len(x)).astype(np.float64) * (1.0 / 2**32)
            q = low + (coins < scaled - low)
        else:
            q = np.rint(scaled)
        signed = q.astype(np.int64)
        return (signed & ((1 << self.bits) - 1)).astype(np.uint32)

    def dequantize_sum(self, total: np.ndarray, clients: int = 1) -> np.ndarray:
        """The float sum from a Z_(2^m) sum; `clients` > 1 divides to the mean."""
        if total.dtype != np.uint32:
            raise ParameterError("total", f"expected uint32 words, got {total.dtype}")
        signed = total.astype(np.int64)
        half = 1 << (self.bits - 1)
        signed = np.where(signed >= half, signed - (1 << self.bits), signed)
        return signed.astype(np.float64) / self.scale / clients
