"""Produce a message whose header name is not UTF-8, as a C, Go or raw-protocol client can.

confluent-kafka's Python producer only takes header names as `str` (and crashes on a lone surrogate),
so this goes through librdkafka's own C API (`rd_kafka_producev`, the library confluent-kafka wraps)
with ctypes. A real client and a real broker: nothing is mocked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import confluent_kafka

__all__ = ["produce_with_raw_header"]

# rd_kafka_vtype_t (rdkafka.h)
_END, _TOPIC, _VALUE, _KEY, _HEADER = 0, 1, 4, 5, 9
_PRODUCER = 0


def _librdkafka() -> ctypes.CDLL:
    bundled = sorted((Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs").glob("librdkafka*.so*"))
    lib = ctypes.CDLL(str(bundled[0]) if bundled else ctypes.util.find_library("rdkafka"))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


def produce_with_raw_header(bootstrap: str, topic: str, key: bytes, value: bytes, name: bytes, header_value: bytes) -> None:
    """One message with header `name` (any bytes but NUL), delivered before returning."""
    lib = _librdkafka()
    error = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    if lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), error, len(error)) != 0:
        raise RuntimeError(error.value.decode())
    handle = lib.rd_kafka_new(_PRODUCER, conf, error, len(error))
    if not handle:
        raise RuntimeError(error.value.decode())
    try:
        code = lib.rd_kafka_producev(
            ctypes.c_void_p(handle),
            ctypes.c_int(_TOPIC), ctypes.c_char_p(topic.encode()),
            ctypes.c_int(_KEY), ctypes.c_char_p(key), ctypes.c_size_t(len(key)),
            ctypes.c_int(_VALUE), ctypes.c_char_p(value), ctypes.c_size_t(len(value)),
            ctypes.c_int(_HEADER), ctypes.c_char_p(name), ctypes.c_char_p(header_value), ctypes.c_ssize_t(len(header_value)),
            ctypes.c_int(_END),
        )
        if code != 0:
            raise RuntimeError(f"rd_kafka_producev: error {code}")
        if lib.rd_kafka_flush(ctypes.c_void_p(handle), 30_000) != 0:
            raise RuntimeError("rd_kafka_flush: not delivered within 30 s")
    finally:
        lib.rd_kafka_destroy(ctypes.c_void_p(handle))
