"""AMQP 0-9-1 frames on the hot path: buffered reads, packed writes, strict decoding.

A call costs a request and a reply on both sides, so py-amqp's general frame
handling would be paid four times per call. :mod:`~rpc.wire.frames` reads many
frames per system call, :mod:`~rpc.wire.encoding` packs the publish and ack a call
sends, and :mod:`~rpc.wire.decoding` reads deliveries within bounds, so that no
message reaches a decoder that may raise on it.
"""

from rpc.wire.decoding import (
    DEFAULT_HEADER_LIMITS,
    DELIVER,
    MAX_HEADER_DEPTH,
    MAX_HEADER_FIELD_BYTES,
    MAX_HEADER_FIELDS,
    HeaderLimits,
    MalformedFrame,
    decode_content_header,
    decode_deliver,
)
from rpc.wire.encoding import ack_frame, publish_frames
from rpc.wire.frames import (
    FRAME_END,
    FRAME_HEADER,
    FRAME_OVERHEAD,
    MAX_RECV,
    RECV_SIZE,
    FrameReader,
)

__all__ = [
    "DEFAULT_HEADER_LIMITS",
    "DELIVER",
    "FRAME_END",
    "FRAME_HEADER",
    "FRAME_OVERHEAD",
    "MAX_HEADER_DEPTH",
    "MAX_HEADER_FIELDS",
    "MAX_HEADER_FIELD_BYTES",
    "MAX_RECV",
    "RECV_SIZE",
    "FrameReader",
    "HeaderLimits",
    "MalformedFrame",
    "ack_frame",
    "decode_content_header",
    "decode_deliver",
    "publish_frames",
]
