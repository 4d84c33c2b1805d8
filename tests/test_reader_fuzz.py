"""Mutated model bytes at the reader: it returns a Graph or raises ModelError, nothing else.

The interpreters (desktop TFLite, tflite-micro) can abort the whole process on malformed files,
so the reader is the gate every byte passes first; it must never crash on its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from toolchain.errors import ModelError
from toolchain.tflite import ir, reader


@pytest.fixture(scope="module")
def seeds(zoo: dict) -> list[bytes]:
    """Small real models: three zoo conversions (kilobytes, so mutations hit the structure)."""
    names = ("mlp_fused", "cnn_residual", "cnn_depthwise_per_tensor")
    return [zoo[n].int8_tflite.read_bytes() for n in names]


def _parse(buf: bytes) -> None:
    try:
        graph = reader.parse_model(bytes(buf))
    except ModelError:
        return
    assert isinstance(graph, ir.Graph)


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    buf = bytearray(draw(st.sampled_from(seeds)))
    kind = draw(st.sampled_from(["flip", "bytes", "truncate", "splice", "zero_run", "offset"]))
    n = len(buf)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, n - 1))
            buf[i] ^= 1 << draw(st.integers(0, 7))
    elif kind == "bytes":
        for _ in range(draw(st.integers(1, 8))):
            buf[draw(st.integers(0, n - 1))] = draw(st.integers(0, 255))
    elif kind == "truncate":
        buf = buf[: draw(st.integers(0, n - 1))]
    elif kind == "splice":
        other = draw(st.sampled_from(seeds))
        a, b = sorted(draw(st.lists(st.integers(0, n), min_size=2, max_size=2)))
        c = draw(st.integers(0, len(other)))
        buf = buf[:a] + bytearray(other[c : c + (b - a)]) + buf[b:]
    elif kind == "zero_run":
        a = draw(st.integers(0, n - 1))
        buf[a : a + draw(st.integers(1, 64))] = bytes(min(64, n - a))[: len(buf[a : a + 64])]
    else:  # a 32-bit little-endian field (offsets, lengths, indices) overwritten with an extreme value
        i = draw(st.integers(0, max(0, n - 4))) & ~3
        value = draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000, n, n + 4]))
        buf[i : i + 4] = value.to_bytes(4, "little")
    return bytes(buf)


def test_seeds_parse(seeds: list[bytes]) -> None:
    for s in seeds:
        assert isinstance(reader.parse_model(s), ir.Graph)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_mutated_bytes_give_graph_or_model_error(seeds: list[bytes], data) -> None:
    _parse(data.draw(mutated(seeds)))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes(buf: bytes) -> None:
    _parse(buf)
    _parse(b"\x00\x00\x00\x00TFL3" + buf)  # past the identifier check


def test_real_model_truncations(shared_models: Path) -> None:
    buf = (shared_models / "ad01_int8.tflite").read_bytes()
    for cut in (0, 8, 16, 100, 1000, len(buf) // 2, len(buf) - 1):
        with pytest.raises(ModelError):
            reader.parse_model(buf[:cut])
