"""A replicated cluster (issue 9 item 4, SPEC §11): `broker start --nodes 3`, replication factor 3 and
`min.insync.replicas=2`, and Kafka's own replication test on our pipeline.

While `train --kafka` publishes and the three groups consume (supervised: an exited consumer is started
again), the leader of the partition train writes to is bounced, with SIGTERM (a controlled shutdown: its
leadership moves first) and with SIGKILL (none: the cluster notices after the broker session times
out); before each bounce the groups have made progress and every partition is fully replicated again,
and while the node is down the groups make progress on the other two. At the end every record train
published (and had acknowledged) is on the topic once and every output is there exactly once
(`supervision.SupervisedPipeline.finish_and_verify`). The short plan (one SIGTERM bounce of the leader)
runs in `make test`, keeping it under 15 minutes: a broker killed -9 is there too, in test_outages and
test_faults, but a killed leader of a cluster is noticed only after the broker session times out and takes
a minute more. `make soak` bounces five times with each signal.

With two of the three nodes down, a write cannot reach two in-sync replicas: train waits and says so,
and finishes, every record once, when they return.

The cluster is this module's own, on ports from 29451 (the session's broker is a single node).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from avro_schemas.topics import DLQ_TOPIC, EPOCHS_TOPIC, SCHEMAS_TOPIC
from exactly_once import murmur2_partition
from kafka_io import quiet_logger
from kafka_testing import free_ports, wait_for
from ppo_telemetry.broker import LocalBroker
from producer.kafka_sink import KafkaSink
from supervision import SupervisedPipeline, records_on_topic, train, train_records

pytestmark = pytest.mark.integration

NODES = 3
BOUNCE_TIMEOUT = 240.0  # a bounced node back and every replica in sync again (a killed one replays its log)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalBroker]:
    """A three-node cluster of this module's own, stopped at the end."""
    broker = LocalBroker(port=free_ports(29451, 2 * NODES), home=tmp_path_factory.mktemp("cluster"), nodes=NODES)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _admin(broker: LocalBroker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap, "logger": quiet_logger()})


def partition_leader(broker: LocalBroker, topic: str, partition: int) -> int | None:
    """The node leading `topic`'s partition now (None while none does, or the cluster cannot say)."""
    try:
        metadata = _admin(broker).list_topics(topic=topic, timeout=5)
    except KafkaException:  # no answer now: ask again
        return None
    info = metadata.topics.get(topic)
    if info is None or partition not in info.partitions:
        return None
    leader = info.partitions[partition].leader
    return leader if leader >= 0 else None


def fully_replicated(broker: LocalBroker) -> bool:
    """Every node registered and every partition of every topic with all its replicas in sync."""
    try:
        metadata = _admin(broker).list_topics(timeout=5)
    except KafkaException:  # no answer now: ask again
        return False
    if len(metadata.brokers) < NODES:
        return False
    return all(
        sorted(p.isrs) == sorted(p.replicas) and p.leader >= 0
        for topic in metadata.topics.values()
        for p in topic.partitions.values()
    )


def topic_settings(broker: LocalBroker, topic: str) -> tuple[int, str]:
    """(replication factor, min.insync.replicas) of `topic`."""
    admin = _admin(broker)
    metadata = admin.list_topics(topic=topic, timeout=30)
    replicas = {len(p.replicas) for p in metadata.topics[topic].partitions.values()}
    assert len(replicas) == 1, replicas
    (config,) = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
    return replicas.pop(), config.result()["min.insync.replicas"].value


@pytest.mark.parametrize(
    "bounces",
    [pytest.param(["term"], id="short"), pytest.param(["term", "kill"] * 5, id="soak", marks=pytest.mark.soak)],
)
def test_leader_bounces_lose_and_double_nothing(cluster: LocalBroker, tmp_path, unique_run_id, bounces: list[str]):
    # Pendulum-v1: a few dozen records a second, which the groups (on three replicas) keep up with
    pipeline = SupervisedPipeline(cluster.bootstrap, unique_run_id("base"), unique_run_id("cur"), tmp_path,
                                  env="Pendulum-v1")
    # the partition train writes its run to, whose leader is bounced
    partition = murmur2_partition(pipeline.run_id.encode())
    try:
        pipeline.start()
        for number, kind in enumerate(bounces, start=1):
            pipeline.progressing(f"every group to make progress before bounce {number}")
            pipeline.supervising(lambda: fully_replicated(cluster), BOUNCE_TIMEOUT,
                                 f"every replica in sync before bounce {number}")
            leader = pipeline.supervising(lambda: partition_leader(cluster, EPOCHS_TOPIC, partition), 60,
                                          f"the leader of partition {partition}")
            began = time.monotonic()
            (cluster.stop_node if kind == "term" else cluster.kill_node)(leader)
            # two nodes serve: a new leader is elected, and the groups go on
            pipeline.supervising(lambda: partition_leader(cluster, EPOCHS_TOPIC, partition) not in (None, leader),
                                 120, f"a new leader of partition {partition} after bounce {number} ({kind})")
            elected = time.monotonic()
            pipeline.progressing(f"every group to make progress with node {leader} down (bounce {number})")
            progressed = time.monotonic()
            cluster.start()  # returns once the node has rejoined: the cluster lists all three
            # the figures of docs/performance.md (reported, not asserted: they depend on the machine's load)
            print(f"bounce {number} ({kind}) of node {leader}: new leader after {elected - began:.1f} s, every group "
                  f"progressed after {progressed - began:.1f} s, node back {time.monotonic() - progressed:.1f} s later")
        pipeline.progressing("every group to make progress after the last bounce")
        pipeline.finish_and_verify()
        # every topic, the project's (input, outputs, state) and Kafka's own (offsets, transactions)
        topics = set(_admin(cluster).list_topics(timeout=30).topics)
        assert {EPOCHS_TOPIC, SCHEMAS_TOPIC, DLQ_TOPIC, "__consumer_offsets", "__transaction_state"} <= topics
        assert {topic: topic_settings(cluster, topic) for topic in topics} == {topic: (3, "2") for topic in topics}
    finally:
        pipeline.close()


def test_two_nodes_down_refuse_writes_and_train_finishes_when_they_return(cluster: LocalBroker, tmp_path, unique_run_id):
    cluster.start()  # whole again, whatever an earlier test left
    wait_for(lambda: fully_replicated(cluster), BOUNCE_TIMEOUT, "every replica in sync")
    config: dict[str, Any] = {"bootstrap.servers": cluster.bootstrap}
    run_id = unique_run_id("cur")
    log_path: Path = tmp_path / "train.log"
    KafkaSink(config).close()  # the topics exist, as on a cluster in use: one node cannot create them
    cluster.stop_node(2)
    cluster.stop_node(3)
    trainer = train(cluster.bootstrap, run_id, 3_000, log_path)
    try:
        # one node cannot make two in-sync replicas (nor a controller quorum): nothing is acknowledged,
        # and train, waiting for Kafka, says so
        wait_for(lambda: "waiting for" in log_path.read_text(), 120, "train to say it waits for Kafka")
        assert trainer.poll() is None, log_path.read_text()
        cluster.start()
        code = trainer.wait(300)
        log = log_path.read_text()
        assert code == 0 and "reach Kafka" in log, log
        assert records_on_topic(config, run_id) == list(range(train_records(log)))
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait(30)
