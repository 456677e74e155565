"""JSON on the wire, encoded and decoded with msgspec. One encoder, one cached decoder per type."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def encode(message: Any) -> bytes:
    """Encode a contract message (or any msgspec-supported value) as JSON bytes."""
    return _encoder.encode(message)


def decode(data: bytes | str, message_type: type[T]) -> T:
    """Decode JSON into `message_type`; raises msgspec.ValidationError naming the bad field.

    For a tagged union such as `calls.AnyCallEvent`, use `decode_union`.
    """
    return decode_union(data, message_type)  # type: ignore[no-any-return]


def decode_union(data: bytes | str, message_type: Any) -> Any:
    decoder = _decoders.get(message_type)
    if decoder is None:
        decoder = _decoders[message_type] = msgspec.json.Decoder(message_type)
    return decoder.decode(data)
