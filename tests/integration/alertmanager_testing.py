"""The real Alertmanager for the integration tests (Debian package `prometheus-alertmanager`): on a free
loopback port, its storage in a directory of the test's, its notifications sent to a `Webhook` in this
process."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kafka_testing import free_ports, wait_for

CONFIG = """\
global:
  resolve_timeout: 5m
route:
  receiver: recorder
  group_by: ['...']
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: recorder
    webhook_configs:
      - url: {webhook}
        send_resolved: true
"""


class Webhook:
    """An HTTP server in this process recording every notification Alertmanager sends it."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        lock = self.lock = threading.Lock()
        notifications = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    notifications.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def statuses(self, run_id: str) -> dict[str, list[str]]:
        """Per alertname, the statuses notified for `run_id`, in the order they arrived."""
        with self.lock:
            alerts = [alert for body in self.notifications for alert in body["alerts"]]
        by_rule: dict[str, list[str]] = {}
        for alert in alerts:
            if alert["labels"].get("run_id") == run_id:
                by_rule.setdefault(alert["labels"]["alertname"], []).append(alert["status"])
        return by_rule

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Alertmanager:
    """The real Alertmanager, on a free loopback port, its storage in tmp; stop and start keep both."""

    def __init__(self, program: str, home: Path, webhook: Webhook) -> None:
        self.program = program
        self.home = home
        self.port = free_ports(29800, 1)
        self.url = f"http://127.0.0.1:{self.port}"
        (home / "alertmanager.yml").write_text(CONFIG.format(webhook=webhook.url))
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.home / f"alertmanager-{self.starts}.log", "w")
        self.process = subprocess.Popen(
            [self.program, f"--config.file={self.home / 'alertmanager.yml'}", f"--storage.path={self.home / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(self._ready, 60, "Alertmanager to be ready")

    def _ready(self) -> bool:
        assert self.process.poll() is None, (self.home / f"alertmanager-{self.starts}.log").read_text()
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM: Alertmanager writes its notification log to its storage before it exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def active(self, run_id: str) -> list[dict[str, Any]]:
        """The alerts of `run_id` Alertmanager holds active now (GET /api/v2/alerts)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?active=true&silenced=false&inhibited=false",
                                    timeout=10) as response:
            alerts = json.loads(response.read())
        return [a for a in alerts if a["labels"].get("run_id") == run_id and a["status"]["state"] == "active"]

    def received(self, status: str) -> float:
        """How many alerts of `status` (firing, resolved) Alertmanager received since it started."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = re.search(rf'^alertmanager_alerts_received_total{{status="{status}",version="v2"}} (\S+)$', text, re.M)
        return float(found.group(1)) if found else 0.0
