"""The telemetry contract: Avro schemas, typed models, the single-object codec and the compatibility check.

This package imports neither Kafka nor the training harness; producers and consumers both build on it.
"""

from .codec import HEADER_SIZE, MAGIC, SingleObjectCodec, epoch_summary_codec
from .errors import CompatibilityError, DecodeError, EncodeError, SchemaLoadError, TelemetryError
from .fields import CROSS_FIELD_RULES, FIELDS, NULLABLE_FIELDS, RUN_ID_PATTERN, Field, is_valid_run_id
from .models import (
    FIELD_TYPES,
    LATEST_VERSION,
    SUPPORTED_VERSIONS,
    V1_1_ADDED_FIELDS,
    VERSION_FIELDS,
    DataMode,
    EpochSummary,
)
from .registry import SchemaRegistry, SchemaVersion, crc64_avro, load_family

__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "SingleObjectCodec",
    "epoch_summary_codec",
    "CompatibilityError",
    "DecodeError",
    "EncodeError",
    "SchemaLoadError",
    "TelemetryError",
    "CROSS_FIELD_RULES",
    "FIELDS",
    "NULLABLE_FIELDS",
    "RUN_ID_PATTERN",
    "Field",
    "is_valid_run_id",
    "FIELD_TYPES",
    "LATEST_VERSION",
    "SUPPORTED_VERSIONS",
    "V1_1_ADDED_FIELDS",
    "VERSION_FIELDS",
    "DataMode",
    "EpochSummary",
    "SchemaRegistry",
    "SchemaVersion",
    "crc64_avro",
    "load_family",
]
