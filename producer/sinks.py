"""What the training harness publishes telemetry to: anything with `publish`, `flush` and `close`."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["TelemetrySink"]


@runtime_checkable
class TelemetrySink(Protocol):
    """A destination for `EpochSummary` records as dicts (the NDJSON stream, Kafka).

    `publish` may complete the record in place (the NDJSON sink sets `log_stream_offset` on v1.1
    records), so a harness that fans out to several sinks publishes to the numbering one first.
    """

    def publish(self, record: dict[str, Any]) -> None:
        """Send one record; errors are `TelemetryError`s."""
        ...

    def flush(self) -> None:
        """Make every published record visible to readers (and durable, where the sink promises it)."""
        ...

    def close(self) -> None:
        """Flush and release the sink; closing twice is harmless."""
        ...
