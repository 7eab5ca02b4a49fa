"""protocol/training/model.py: architectures parse and refuse naming the field, layouts match
scikit-learn's estimators, weights round-trip through flat vectors and safetensors bytes, the
bytes and digest are stable, and the decoder refuses everything but this model's float64 tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ParameterError
from protocol.training.model import (
    Architecture,
    ModelError,
    flatten,
    from_safetensors,
    initial_weights,
    model_digest,
    to_safetensors,
    unflatten,
)

LOGISTIC = Architecture("logistic", 64, 10)
BINARY = Architecture("logistic", 30, 2)
MLP = Architecture("mlp", 13, 3, (8, 4))

architectures = st.one_of(
    st.builds(Architecture, st.just("logistic"), st.integers(1, 12), st.integers(2, 6)),
    st.builds(Architecture, st.just("mlp"), st.integers(1, 12), st.integers(2, 6),
              st.lists(st.integers(1, 8), min_size=1, max_size=3).map(tuple)),
)


def test_model_error_is_a_parameter_error_naming_the_field() -> None:
    with pytest.raises(ParameterError) as info:
        Architecture.from_dict({"architecture": "mlp", "features": 0, "classes": 3}, where="job.model_config")
    assert isinstance(info.value, ModelError)
    assert info.value.field == "job.model_config.features"


def test_from_dict_reads_the_four_keys_and_ignores_the_rest() -> None:
    raw = {"architecture": "mlp", "features": 64, "classes": 10, "initial_weights": "abc", "note": 1}
    arch = Architecture.from_dict(raw)
    assert arch == Architecture("mlp", 64, 10, (32,))  # the default hidden layer
    assert Architecture.from_dict(arch.to_dict()) == arch
    assert Architecture.from_dict({"architecture": "logistic", "features": 4, "classes": 2}).hidden == ()
    assert Architecture.from_dict(LOGISTIC.to_dict()) == LOGISTIC


@pytest.mark.parametrize(("raw", "field"), [
    ([], "model_config"),
    ({"features": 4, "classes": 2}, "model_config.architecture"),
    ({"architecture": "cnn", "features": 4, "classes": 2}, "model_config.architecture"),
    ({"architecture": "logistic", "classes": 2}, "model_config.features"),
    ({"architecture": "logistic", "features": True, "classes": 2}, "model_config.features"),
    ({"architecture": "logistic", "features": 4.0, "classes": 2}, "model_config.features"),
    ({"architecture": "logistic", "features": 4, "classes": 1}, "model_config.classes"),
    ({"architecture": "logistic", "features": 4, "classes": 2, "hidden": [3]}, "model_config.hidden"),
    ({"architecture": "mlp", "features": 4, "classes": 2, "hidden": []}, "model_config.hidden"),
    ({"architecture": "mlp", "features": 4, "classes": 2, "hidden": [1, 2, 3, 4]}, "model_config.hidden"),
    ({"architecture": "mlp", "features": 4, "classes": 2, "hidden": "32"}, "model_config.hidden"),
    ({"architecture": "mlp", "features": 4, "classes": 2, "hidden": [8, 0]}, "model_config.hidden[1]"),
    ({"architecture": "mlp", "features": 100_000, "classes": 2, "hidden": [1000]}, "model_config"),
])
def test_from_dict_refuses_naming_the_field(raw: object, field: str) -> None:
    with pytest.raises(ModelError) as info:
        Architecture.from_dict(raw)
    assert info.value.field == field


def test_the_constructor_checks_too() -> None:
    with pytest.raises(ModelError, match="model_config.hidden"):
        Architecture("mlp", 4, 3)


def test_layouts_match_scikit_learn_shapes() -> None:
    assert LOGISTIC.layout() == [("coef", (10, 64)), ("intercept", (10,))]
    assert BINARY.layout() == [("coef", (1, 30)), ("intercept", (1,))]  # sklearn's binary: one row
    assert MLP.layout() == [("coefs.0", (13, 8)), ("intercepts.0", (8,)), ("coefs.1", (8, 4)),
                            ("intercepts.1", (4,)), ("coefs.2", (4, 3)), ("intercepts.2", (3,))]
    assert Architecture("mlp", 5, 2, (3,)).layout()[-2:] == [("coefs.1", (3, 1)), ("intercepts.1", (1,))]
    assert LOGISTIC.parameters == 650 and BINARY.parameters == 31
    assert MLP.parameters == 13 * 8 + 8 + 8 * 4 + 4 + 4 * 3 + 3


def test_initial_weights() -> None:
    assert np.array_equal(initial_weights(LOGISTIC, 5), np.zeros(650))
    a, b = initial_weights(MLP, 7), initial_weights(MLP, 7)
    assert a.dtype == np.float64 and a.shape == (MLP.parameters,)
    assert np.array_equal(a, b) and not np.array_equal(a, initial_weights(MLP, 8))
    first = unflatten(MLP, a)["coefs.0"]
    bound = np.sqrt(6 / (13 + 8))  # Glorot-uniform for relu, as scikit-learn
    assert np.all(np.abs(first) <= bound) and first.std() > bound / 4


@settings(max_examples=40, deadline=None)
@given(arch=architectures, data=st.data())
def test_flatten_unflatten_round_trip(arch: Architecture, data: st.DataObject) -> None:
    flat = np.array(data.draw(st.lists(st.floats(allow_nan=False, allow_infinity=False),
                                       min_size=arch.parameters, max_size=arch.parameters)), dtype=np.float64)
    tensors = unflatten(arch, flat)
    assert [(name, t.shape) for name, t in tensors.items()] == arch.layout()
    assert np.array_equal(flatten(arch, tensors), flat)
    back = from_safetensors(arch, to_safetensors(arch, flat))
    assert back.dtype == np.float64 and np.array_equal(back, flat)  # nothing rounded


def test_unflatten_copies() -> None:
    flat = np.arange(MLP.parameters, dtype=np.float64)
    unflatten(MLP, flat)["coefs.0"][:] = -1
    assert flat[0] == 0


def test_flatten_and_unflatten_refuse_naming_the_tensor() -> None:
    tensors = unflatten(MLP, initial_weights(MLP, 0))
    with pytest.raises(ModelError) as info:
        flatten(MLP, {**tensors, "coefs.1": np.zeros((4, 8))})
    assert info.value.field == "coefs.1"
    with pytest.raises(ModelError) as info:
        flatten(MLP, {k: v for k, v in tensors.items() if k != "intercepts.2"})
    assert info.value.field == "intercepts.2"
    with pytest.raises(ModelError) as info:
        flatten(MLP, {**tensors, "extra": np.zeros(1)})
    assert info.value.field == "extra"
    with pytest.raises(ModelError, match="weights"):
        unflatten(MLP, np.zeros(MLP.parameters + 1))


def test_safetensors_bytes_and_digest_are_stable() -> None:
    flat = initial_weights(MLP, 3)
    blob = to_safetensors(MLP, flat)
    assert blob == to_safetensors(MLP, flat.copy())
    # The format sorts tensors itself: the same tensors inserted in any order give the same bytes.
    shuffled = dict(reversed(list(unflatten(MLP, flat).items())))
    meta = {"architecture": json.dumps(MLP.to_dict(), sort_keys=True, separators=(",", ":"))}
    assert safetensors.numpy.save(shuffled, metadata=meta) == blob
    digest = model_digest(blob)
    assert len(digest) == 64 and digest == model_digest(bytes(blob))
    nudged = flat.copy()
    nudged[-1] = np.nextafter(nudged[-1], np.inf)  # one ulp: float64 keeps it, so the digest sees it
    assert model_digest(to_safetensors(MLP, nudged)) != digest
    # A fixed vector: its bytes and digest must not change between releases (nodes of different
    # versions name the same model alike).
    tiny = Architecture("logistic", 2, 2)
    blob = to_safetensors(tiny, np.array([0.5, -1.0, 0.25]))
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + size])
    assert header["coef"] == {"dtype": "F64", "shape": [1, 2], "data_offsets": [0, 16]}
    assert json.loads(header["__metadata__"]["architecture"]) == tiny.to_dict()
    assert blob[8 + size:] == np.array([0.5, -1.0, 0.25], dtype="<f8").tobytes()
    assert model_digest(blob) == "d1a89c0c8aac10d2f9cf59ec8bba6018f1d9842838b91d2fc2e804b8220f2b0c"


def _blob(tensors: dict[str, np.ndarray]) -> bytes:
    return bytes(safetensors.numpy.save(tensors))


def test_from_safetensors_refuses_naming_the_tensor() -> None:
    good = unflatten(BINARY, np.zeros(BINARY.parameters))
    cases = {
        "m.coef": {**good, "coef": np.zeros((2, 30))},
        "m.intercept": {"coef": good["coef"]},
        "m.bias": {**good, "bias": np.zeros(1)},
    }
    for field, tensors in cases.items():
        with pytest.raises(ModelError) as info:
            from_safetensors(BINARY, _blob(tensors), where="m")
        assert info.value.field == field
    with pytest.raises(ModelError, match="float32") as info:
        from_safetensors(BINARY, _blob({**good, "coef": np.zeros((1, 30), dtype=np.float32)}), where="m")
    assert info.value.field == "m.coef"
    with pytest.raises(ModelError, match="non-finite") as info:
        from_safetensors(BINARY, _blob({**good, "intercept": np.array([np.nan])}), where="m")
    assert info.value.field == "m.intercept"
    with pytest.raises(ModelError, match="non-finite"):
        to_safetensors(BINARY, np.full(BINARY.parameters, np.inf))


def test_from_safetensors_refuses_pickles_and_garbage() -> None:
    import pickle

    for blob in (b"", b"\x00" * 8, pickle.dumps(np.zeros(31)), b"\xff" * 64, to_safetensors(BINARY, np.zeros(31))[:-1]):
        with pytest.raises(ModelError) as info:
            from_safetensors(BINARY, blob, where="round 3 model")
        assert info.value.field == "round 3 model"
    with pytest.raises(ModelError):
        from_safetensors(BINARY, "not bytes", where="m")  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(blob=st.binary(max_size=300), cut=st.integers(0, 400))
def test_decoder_returns_weights_or_model_error_only(blob: bytes, cut: int) -> None:
    real = to_safetensors(BINARY, np.arange(31, dtype=np.float64))
    for candidate in (blob, real[:cut] + blob, real[:cut]):
        try:
            flat = from_safetensors(BINARY, candidate)
        except ModelError:
            continue
        assert flat.shape == (31,) and np.all(np.isfinite(flat))
