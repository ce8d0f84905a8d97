"""What the Prometheus exporter costs the validator group: its throughput with and without metrics.

The backlog of bench/kafka_validator.py (`--records` EpochSummary v1.1 messages over `--runs` runs,
epoch-major, on a topic of its own) is consumed `--pairs` times by the validator group with metrics and
as many times without, alternately (without first), each time under a consumer group of its own from
the first offset. Without: `TransactionalRunner(config, ValidatorGroup(), ...)` as kafka_validator.py
times it (first batch to the commit holding the last record). With: the same plus
`metrics=ConsumerMetrics("validate")`, served on 127.0.0.1 (`ConsumerMetrics.serve`) and scraped once a
second by an HTTP client thread in this process, as Prometheus would (the scrapes share the GIL with the
group, as in `consume --metrics-port`); the bench checks that the last scrape counted every record.

Each pass is timed by the wall clock (records/s, as kafka_validator.py) and by this process's CPU time
over the same span (records per CPU second: the group, librdkafka's threads, the HTTP server and the
scraper), which other load on the machine disturbs less. A pass with metrics is compared with the pass
just before it (the same load, near enough): the overhead is 1 - the median of those ratios. Exits 1
if the wall-clock overhead is above 5 % (issue 11). Broker: a fresh local KRaft broker on port 29192
(removed afterwards) unless `KAFKA_BOOTSTRAP_SERVERS` is set.

    .venv/bin/python bench/metrics_overhead.py [--records 300000] [--runs 1000] [--pairs 5]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_broker import DEFAULT_PORT, bench_bootstrap  # noqa: E402
from kafka_validator import TimedRunner, backlog_size, backlog_values, produce_backlog  # noqa: E402

from avro_schemas.topics import VALIDATOR_GROUP  # noqa: E402
from consumers.groups import ValidatorGroup  # noqa: E402
from consumers.metrics import ConsumerMetrics  # noqa: E402
from kafka_io import ensure_topics, partition_count  # noqa: E402

MAX_OVERHEAD = 0.05
SCRAPE_INTERVAL = 1.0


class CpuTimedRunner(TimedRunner):
    """`TimedRunner` that also takes this process's CPU time at its first batch and its last commit."""

    def process_batch(self, messages: list) -> None:
        if self.first_batch_at is None:
            self.first_cpu_at = time.process_time()
        super().process_batch(messages)
        self.last_cpu_at = time.process_time()


class Scraper(threading.Thread):
    """GETs a metrics page every `SCRAPE_INTERVAL` seconds until stopped; keeps the last page."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.scrapes = 0
        self.page = ""
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(SCRAPE_INTERVAL):
            self.scrape()

    def scrape(self) -> None:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            self.page = response.read().decode()
        self.scrapes += 1

    def stop(self) -> None:
        self._stopping.set()
        self.join(15)
        self.scrape()  # the final state, after the last commit


def timed_run(
    config: dict, topic: str, records: int, batch_size: int, group: str, metered: bool
) -> tuple[float, float, str]:
    """Records per wall second and per CPU second of one pass of the validator group over the backlog, and
    a note (metered: the scrapes)."""
    core = ValidatorGroup()
    core.group = group  # the validator core under a group of this pass's own
    metrics = ConsumerMetrics("validate") if metered else None
    runner = CpuTimedRunner(config, core, instance_id="bench", input_topic=topic, batch_size=batch_size,
                         err=io.StringIO(), metrics=metrics)
    runner.target = records
    server = scraper = None
    if metrics is not None:
        server = metrics.serve(0, "127.0.0.1")
        scraper = Scraper(f"http://127.0.0.1:{server.port}/metrics")
        scraper.start()
    try:
        runner.run(install_signals=False)
    finally:
        if scraper is not None:
            scraper.stop()
        if server is not None:
            server.close()
    counts = runner.counts
    if counts.consumed != records or counts.processed != records:
        raise SystemExit(f"the group did not process the backlog exactly: {counts}")
    rate = records / (runner.last_commit_at - runner.first_batch_at)
    cpu_rate = records / (runner.last_cpu_at - runner.first_cpu_at)
    if scraper is None:
        return rate, cpu_rate, ""
    expected = f'ppo_telemetry_records_total{{group="validate",outcome="valid"}} {float(records)}'
    if expected not in scraper.page:
        raise SystemExit(f"the last scrape does not count {records} valid records")
    return rate, cpu_rate, f"({scraper.scrapes} scrapes)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=300_000, help="backlog size (default 300,000)")
    parser.add_argument("--runs", type=int, default=1000, help="runs the backlog is spread over (default 1,000)")
    parser.add_argument("--pairs", type=int, default=5, help="passes of each mode, alternating (default 5)")
    parser.add_argument("--batch-size", type=int, default=TimedRunner.batch_size, help="the group's consume batch")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of the backlog topic (default 3)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the fresh local broker")
    args = parser.parse_args()

    tag = uuid.uuid4().hex[:8]
    topic = f"bench.epochs.{tag}"
    rates: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with bench_bootstrap(args.port) as (bootstrap, _fresh):
        config = {"bootstrap.servers": bootstrap}
        ensure_topics(config, {topic: (args.partitions, {})})
        keys, values = backlog_values(args.records, args.runs, tag)
        produced_in = produce_backlog(config, topic, keys, values)
        del keys, values
        size = backlog_size(config, topic, partition_count(config, topic))
        print(f"backlog: {size:,} records on {topic} ({args.partitions} partitions), {args.runs:,} runs; "
              f"produced in {produced_in:.1f} s", flush=True)
        if size != args.records:
            raise SystemExit(f"the backlog holds {size} records, not {args.records}")
        for index in range(2 * args.pairs):
            metered = index % 2 == 1
            group = f"{VALIDATOR_GROUP}-bench-{tag}-{index}"
            rate, cpu_rate, note = timed_run(config, topic, args.records, args.batch_size, group, metered)
            rates[metered].append((rate, cpu_rate))
            mode = "with metrics   " if metered else "without metrics"
            print(f"pass {index + 1}: {mode} {rate:>10,.0f} records/s, {cpu_rate:>10,.0f} records/CPU s {note}",
                  flush=True)

    overheads = {}
    for clock, which in (("wall", 0), ("CPU", 1)):
        without = statistics.median(rate[which] for rate in rates[False])
        with_metrics = statistics.median(rate[which] for rate in rates[True])
        ratio = statistics.median(on[which] / off[which] for off, on in zip(rates[False], rates[True], strict=True))
        overheads[clock] = 1 - ratio
        unit = "records/s" if clock == "wall" else "records/CPU s"
        print(f"{clock:>4}: without metrics {without:>9,.0f} {unit}, with {with_metrics:>9,.0f} (medians of "
              f"{args.pairs}); pass-pair ratio with / without (median) {ratio:.3f}: overhead {1 - ratio:+.1%}")
    met = overheads["wall"] <= MAX_OVERHEAD
    print(f"target: overhead <= {MAX_OVERHEAD:.0%} of the validator group's throughput: {'met' if met else 'NOT met'}")
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
