"""Sandesh binary encoder and decoder (spec section 1), sans-IO.

The codec's public functions, re-exported from the private modules that do one job
each:

* :mod:`._wire`: the errors, limits and struct helpers the others share;
* :mod:`._codegen`: the generated fast paths (encoders per shape, decoders per type
  and per shape), all from the schema (vr.thrift), each compiled on first use;
* :mod:`._encode`: ``encode``/``encode_many``, the generated encoder first and a
  generic one that normalises unusual values or names the bad field;
* :mod:`._decode`: ``decode``/``decode_one``, learnt shapes first, then the per-type
  decoder, then a generic field walker that follows the C decoder's rules and reports
  precise errors.

Every length read from the wire is checked against the bytes actually present before
it is used, so hostile input can neither over-read nor make us allocate more than a
small multiple of its own size. The thriftpy2 Cython decoder is never used.
"""

from __future__ import annotations

from vrtwist.sandesh import _decode, _encode
from vrtwist.sandesh._decode import decode, decode_one
from vrtwist.sandesh._encode import encode, encode_many, message_name
from vrtwist.sandesh._wire import (
    MAX_NAME_LEN,
    MAX_NESTING,
    SandeshDecodeError,
    SandeshEncodeError,
)

__all__ = [
    "MAX_NAME_LEN",
    "MAX_NESTING",
    "SandeshDecodeError",
    "SandeshEncodeError",
    "decode",
    "decode_one",
    "encode",
    "encode_many",
    "message_name",
]

# The generic paths and the encoder table the property tests compare with the fast paths.
_ENCODERS = _encode._ENCODERS
_encode_slow = _encode._encode_slow
_decode_fields_slow = _decode._decode_fields_slow
