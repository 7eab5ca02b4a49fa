"""Tests for protocol/quantize.py: fixed-point encoding into Z_(2^m) and back."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.crypto import sha256
from protocol.errors import ParameterError
from protocol.quantize import Quantizer


def _seed(*parts: bytes) -> bytes:
    return sha256(b"rounding", *parts)


def _sum_words(words: list[np.ndarray], bits: int) -> np.ndarray:
    total = np.zeros(len(words[0]), dtype=np.uint32)
    for w in words:
        assert w.dtype == np.uint32
        np.add(total, w, out=total)
    return total & np.uint32((1 << bits) - 1)


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(finite, min_size=1, max_size=32),
    clip=st.floats(0.01, 1000),
    max_clients=st.integers(1, 1000),
    bits=st.integers(8, 32),
    rounding=st.sampled_from(["stochastic", "nearest"]),
)
def test_quantize_dequantize_within_the_documented_bound(
    values: list[float], clip: float, max_clients: int, bits: int, rounding: str
) -> None:
    try:
        q = Quantizer.for_range(clip, max_clients, bits, rounding)  # type: ignore[arg-type]
    except ParameterError:
        return  # too many clients for this many bits: checked separately
    x = np.array(values)
    words = q.quantize(x, _seed(bytes(len(values))))
    assert words.dtype == np.uint32
    assert int(words.max()) < 1 << bits
    back = q.dequantize_sum(words)
    clipped = np.clip(x, -clip, clip)
    bound = q.error_bound(1)
    assert np.all(np.abs(back - clipped) <= bound * (1 + 1e-9))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 20),
    clip=st.floats(0.1, 10),
    bits=st.integers(12, 32),
    data=st.data(),
)
def test_sum_of_clients_dequantizes_within_n_over_scale(n: int, clip: float, bits: int, data: st.DataObject) -> None:
    q = Quantizer.for_range(clip, n, bits)
    inputs = [np.array(data.draw(st.lists(st.floats(-2 * clip, 2 * clip), min_size=8, max_size=8))) for _ in range(n)]
    total = _sum_words([q.quantize(x, _seed(bytes([i]))) for i, x in enumerate(inputs)], bits)
    exact = sum(np.clip(x, -clip, clip) for x in inputs)
    assert np.all(np.abs(q.dequantize_sum(total) - exact) < q.error_bound(n))


@pytest.mark.parametrize(
    ("bits", "max_clients"), [(b, m) for b in (8, 16, 24, 32) for m in (1, 2, 3, 7, 100, 1000) if m < 1 << (b - 1)]
)
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
def test_max_clients_at_plus_minus_clip_do_not_wrap(bits: int, max_clients: int, rounding: str) -> None:
    clip = 1.7
    q = Quantizer.for_range(clip, max_clients, bits, rounding)  # type: ignore[arg-type]
    for sign in (1.0, -1.0):
        x = np.full(4, sign * clip)
        words = [q.quantize(x * 1.5, _seed(i.to_bytes(4, "big"))) for i in range(max_clients)]  # beyond clip: clipped
        back = q.dequantize_sum(_sum_words(words, bits))
        assert np.all(np.sign(back) == sign), "the sum wrapped around"
        assert np.all(np.abs(back - sign * clip * max_clients) <= q.error_bound(max_clients))


@pytest.mark.parametrize("max_clients", [1, 2, 3, 7, 100, 1000, 10_000, 46_000])
@pytest.mark.parametrize("clip", [1e-3, 1.7, 1e4])
def test_one_client_more_with_the_largest_scale_is_a_config_error(max_clients: int, clip: float) -> None:
    scale = Quantizer.largest_scale(clip, max_clients)
    Quantizer(clip, scale, max_clients)  # fits
    with pytest.raises(ParameterError) as info:
        Quantizer(clip, scale, max_clients + 1)
    assert info.value.field == "scale"


def test_one_client_more_may_fit_when_steps_are_coarse() -> None:
    # Not a bug: with 8 bits and 100 clients a client gets floor(127/100) = 1 step, and 101 x 1 < 128 still fits.
    # The overflow check is exact (next test), so "max_clients + 1 fails" holds only while m(m+1) > 2^(bits-1) - 1.
    scale = Quantizer.largest_scale(1.0, 100, bits=8)
    assert Quantizer(1.0, scale, 101, bits=8).max_step == 1


@settings(max_examples=100, deadline=None)
@given(clip=st.floats(1e-3, 1e6), max_clients=st.integers(1, 10**6), bits=st.integers(2, 32), scale=st.floats(1e-3, 1e9))
def test_overflow_check_is_exact(clip: float, max_clients: int, bits: int, scale: float) -> None:
    worst = max_clients * math.ceil(clip * scale)
    if worst < 1 << (bits - 1):
        Quantizer(clip, scale, max_clients, bits)
    else:
        with pytest.raises(ParameterError) as info:
            Quantizer(clip, scale, max_clients, bits)
        assert info.value.field in ("scale", "max_clients")


def test_too_many_clients_for_the_bits_is_a_config_error() -> None:
    with pytest.raises(ParameterError):
        Quantizer.for_range(1.0, 1 << 7, bits=8)


@pytest.mark.parametrize("x", [0.3, -2.7, 0.5, 4.01])
def test_stochastic_rounding_is_unbiased(x: float) -> None:
    q = Quantizer(clip=10.0, scale=1.0, max_clients=1)
    samples = np.concatenate([q.dequantize_sum(q.quantize(np.full(64, x), _seed(i.to_bytes(4, "big")))) for i in range(200)])
    frac = x - math.floor(x)
    assert set(np.unique(samples)) <= {math.floor(x), math.floor(x) + 1}
    std_error = math.sqrt(frac * (1 - frac) / len(samples))
    assert abs(samples.mean() - x) < 5 * std_error + 1e-12
    # nearest rounding of the same value is biased by the full distance to the nearest integer
    nearest = Quantizer(clip=10.0, scale=1.0, max_clients=1, rounding="nearest")
    assert nearest.dequantize_sum(nearest.quantize(np.full(4, x)))[0] == float(np.rint(x))


def test_stochastic_rounding_depends_on_the_seed_and_is_reproducible() -> None:
    q = Quantizer(clip=10.0, scale=1.0, max_clients=1)
    x = np.full(64, 0.5)
    assert np.array_equal(q.quantize(x, _seed(b"a")), q.quantize(x, _seed(b"a")))
    assert not np.array_equal(q.quantize(x, _seed(b"a")), q.quantize(x, _seed(b"b")))
    with pytest.raises(ParameterError, match="rounding_seed"):
        q.quantize(x)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_or_infinite_input_rejected(bad: float) -> None:
    q = Quantizer(clip=1.0, scale=100.0, max_clients=10)
    with pytest.raises(ParameterError) as info:
        q.quantize(np.array([0.0, bad, 1.0]), _seed())
    assert info.value.field == "values"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clip": math.nan}, "clip"),
        ({"clip": 0.0}, "clip"),
        ({"scale": math.inf}, "scale"),
        ({"scale": -1.0}, "scale"),
        ({"max_clients": 0}, "max_clients"),
        ({"max_clients": 2.0}, "max_clients"),
        ({"bits": 33}, "bits"),
        ({"bits": 1}, "bits"),
        ({"rounding": "floor"}, "rounding"),
    ],
)
def test_bad_configuration_names_the_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"clip": 1.0, "scale": 10.0, "max_clients": 10, "bits": 32, "rounding": "stochastic"}
    args.update(kwargs)
    with pytest.raises(ParameterError) as info:
        Quantizer(**args)  # type: ignore[arg-type]
    assert info.value.field == field


def test_dequantize_requires_uint32_and_reads_twos_complement() -> None:
    q = Quantizer(clip=1.0, scale=10.0, max_clients=10, bits=8)
    with pytest.raises(ParameterError, match="uint32"):
        q.dequantize_sum(np.array([1, 2], dtype=np.int64))
    words = np.array([0, 1, 127, 128, 255], dtype=np.uint32)
    assert list(q.dequantize_sum(words) * 10) == [0, 1, 127, -128, -1]
    assert list(q.dequantize_sum(words, clients=2) * 20) == [0, 1, 127, -128, -1]


def test_quantize_rejects_a_matrix() -> None:
    q = Quantizer(clip=1.0, scale=10.0, max_clients=10, rounding="nearest")
    with pytest.raises(ParameterError, match="1-d"):
        q.quantize(np.zeros((2, 2)))
