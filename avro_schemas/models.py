"""Typed models of the record: `EpochSummary` and `DataMode`, with the field lists of each version.

The field lists and types come from the field table (`avro_schemas.fields`, itself read from the `.avsc`
files); the dataclass and the enum are written out for type checkers, and checked against the table here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from typing import Any

from .fields import FIELDS, LATEST_VERSION, SUPPORTED_VERSIONS, VERSION_FIELDS, FieldType

__all__ = [
    "DataMode",
    "EpochSummary",
    "FieldType",
    "SUPPORTED_VERSIONS",
    "LATEST_VERSION",
    "VERSION_FIELDS",
    "FIELD_TYPES",
    "V1_1_ADDED_FIELDS",
]


class DataMode(str, enum.Enum):
    """Where the dataset feeding an epoch came from (SPEC §1); `unknown` exists only for enum evolution."""

    REPLAY = "replay"
    ROLLOUT = "rollout"
    MIXED = "mixed"
    UNKNOWN = "unknown"


FIELD_TYPES: dict[str, FieldType] = {name: field.type for name, field in FIELDS.items()}
V1_1_ADDED_FIELDS: tuple[str, ...] = tuple(name for name, field in FIELDS.items() if field.since == "1.1")


@dataclass(frozen=True, slots=True)
class EpochSummary:
    """One PPO training epoch's health record (SPEC §1). v1.1 fields are None in a v1.0 record."""

    telemetry_version: str
    run_id: str
    epoch: int
    global_step: int
    timestamp_ms: int
    policy_loss: float
    value_loss: float
    kl_divergence: float
    clip_fraction: float
    explained_variance: float | None
    learning_rate: float
    mean_episode_return: float | None
    num_samples: int
    num_minibatches: int
    epoch_duration_sec: float | None = None
    data_mode: DataMode | None = None
    cycle_id: int | None = None
    batch_entropy_mean: float | None = None
    batch_entropy_std: float | None = None
    grad_norm_max: float | None = None
    kl_divergence_max: float | None = None
    reward_advantage_corr: float | None = None
    rollout_ticks: int | None = None
    log_stream_offset: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochSummary:
        """Build from a record dict (JSON or Avro); keys outside the record's version are ignored.

        The dict is assumed valid (see `consumers.validator`); this only converts, it does not check.
        """
        names = VERSION_FIELDS[data["telemetry_version"]]
        values = {name: data.get(name) for name in names}
        mode = values.get("data_mode")
        if mode is not None:
            values["data_mode"] = DataMode(mode)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The record as a dict holding exactly its version's fields, in schema order."""
        out = {name: getattr(self, name) for name in VERSION_FIELDS[self.telemetry_version]}
        if out.get("data_mode") is not None:
            out["data_mode"] = out["data_mode"].value
        return out


_PYTHON_TYPES = {"string": "str", "int": "int", "long": "int", "double": "float", "enum": DataMode.__name__}


def _annotation(name: str) -> str:
    """The annotation the dataclass must give field `name`, from the field table."""
    ftype = FIELDS[name].type
    return _PYTHON_TYPES[ftype.avro_type] + (" | None" if ftype.nullable else "")


assert tuple(f.name for f in fields(EpochSummary)) == VERSION_FIELDS[LATEST_VERSION], "model and schema differ"
assert all(f.type == _annotation(f.name) for f in fields(EpochSummary)), "model and schema types differ"
assert tuple(mode.value for mode in DataMode) == FIELDS["data_mode"].type.symbols, "DataMode and schema differ"
