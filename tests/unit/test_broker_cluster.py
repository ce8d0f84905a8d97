"""`broker --nodes N`: a cluster's layout, ports and rendered settings, and its one-line refusals (no broker
is started here; tests/integration/test_cluster.py runs a real one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kafka_io import replication_for
from ppo_telemetry.broker import BrokerError, LocalBroker


def properties(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def run_broker(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PPO_TELEMETRY_BROKER_HOME": str(tmp_path / "home")}
    return subprocess.run([sys.executable, "-m", "ppo_telemetry", "broker", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_three_nodes_take_a_client_and_a_controller_port_each_from_the_first(tmp_path):
    broker = LocalBroker(port=19092, home=tmp_path, nodes=3)
    assert [(n.node_id, n.port, n.controller_port) for n in broker.node_list] == [
        (1, 19092, 19093), (2, 19094, 19095), (3, 19096, 19097),
    ]
    assert broker.bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert [n.run_dir for n in broker.node_list] == [tmp_path / "19092" / f"node-{i}" for i in (1, 2, 3)]


def test_one_node_keeps_the_single_broker_layout(tmp_path):
    broker = LocalBroker(port=19092, home=tmp_path)
    (node,) = broker.node_list
    assert (node.node_id, node.port, node.controller_port, node.run_dir) == (1, 19092, 19093, tmp_path / "19092")
    assert broker.bootstrap == "127.0.0.1:19092"


def test_each_node_of_a_cluster_is_a_voter_with_three_replicas_and_two_in_sync(tmp_path):
    broker = LocalBroker(port=19092, home=tmp_path, nodes=3)
    for node in broker.node_list:
        rendered = properties(broker.render_properties(node))
        assert rendered["node.id"] == str(node.node_id)
        assert rendered["controller.quorum.voters"] == "1@127.0.0.1:19093,2@127.0.0.1:19095,3@127.0.0.1:19097"
        assert rendered["listeners"] == f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        assert rendered["log.dirs"] == str(node.run_dir / "data")
        for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                    "default.replication.factor"):
            assert rendered[key] == "3", key
        assert rendered["min.insync.replicas"] == rendered["transaction.state.log.min.isr"] == "2"
        assert rendered["unclean.leader.election.enable"] == "false"
        assert "@" not in "".join(v for k, v in rendered.items() if k != "controller.quorum.voters")


def test_a_single_node_has_one_replica_and_one_in_sync(tmp_path):
    broker = LocalBroker(port=19092, home=tmp_path)
    rendered = properties(broker.render_properties(broker.node_list[0]))
    assert rendered["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert rendered["offsets.topic.replication.factor"] == rendered["default.replication.factor"] == "1"
    assert rendered["min.insync.replicas"] == rendered["transaction.state.log.min.isr"] == "1"


@pytest.mark.parametrize("brokers, expected", [
    (1, (1, {})), (2, (2, {})), (3, (3, {"min.insync.replicas": "2"})), (7, (3, {"min.insync.replicas": "2"})),
    (0, (1, {})),
])
def test_topics_get_three_replicas_and_two_in_sync_from_three_brokers_on(brokers, expected):
    assert replication_for(brokers) == expected


def test_the_recorded_node_count_is_used_when_none_is_given(tmp_path):
    run_dir = tmp_path / "19092"
    run_dir.mkdir()
    (run_dir / "cluster.properties").write_text("nodes=3\ncluster.id=abc\n")
    assert LocalBroker(port=19092, home=tmp_path).node_count == 3
    assert LocalBroker(port=19094, home=tmp_path).node_count == 1


def test_a_clusters_data_does_not_start_as_one_node_nor_the_reverse(tmp_path):
    (tmp_path / "19092").mkdir()
    (tmp_path / "19092" / "cluster.properties").write_text("nodes=3\ncluster.id=abc\n")
    with pytest.raises(BrokerError, match=r"holds the data of a 3-node cluster: start it with --nodes 3"):
        LocalBroker(port=19092, home=tmp_path, nodes=1).start()
    (tmp_path / "19192" / "data").mkdir(parents=True)
    with pytest.raises(BrokerError, match=r"holds a single broker's data: start it with --nodes 1"):
        LocalBroker(port=19192, home=tmp_path, nodes=3).start()


@pytest.mark.parametrize("nodes, port, message", [
    (6, 19092, "--nodes must be 1 to 5, not 6"),
    (3, 65531, "3 nodes from port 65531 need ports up to 65536"),
])
def test_impossible_clusters_are_one_line(tmp_path, nodes, port, message):
    with pytest.raises(BrokerError, match=message):
        LocalBroker(port=port, home=tmp_path, nodes=nodes).start()


def test_a_port_another_program_listens_on_is_named(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        # the listener is node 2's client port: the cluster starts two below it
        with pytest.raises(BrokerError, match=rf"^port {taken} \(node 2\) is in use by another program"):
            LocalBroker(port=taken - 2, home=tmp_path, nodes=3).start()


def test_status_of_a_cluster_that_does_not_run_exits_1(tmp_path):
    run_dir = tmp_path / "home" / "39911"
    run_dir.mkdir(parents=True)
    (run_dir / "cluster.properties").write_text("nodes=3\ncluster.id=abc\n")
    proc = run_broker(["status", "--port", "39911"], tmp_path)
    assert proc.returncode == 1 and "not running on port 39911" in proc.stderr and proc.stdout == ""
    proc = run_broker(["stop", "--port", "39911"], tmp_path)
    assert proc.returncode == 0 and "none was running on port 39911 (3 nodes)" in proc.stderr


def test_nodes_out_of_range_is_one_line_and_exit_2(tmp_path):
    proc = run_broker(["start", "--port", "39921", "--nodes", "9"], tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--nodes must be 1 to 5" in proc.stderr
