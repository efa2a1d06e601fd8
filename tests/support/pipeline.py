"""Run the real pipeline processes (source, worker, sinks) for end-to-end tests.

Each part is the production entry point (`python -m clinstream.cli run ...`) in
its own process, so a test can SIGKILL one and start it again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka.admin import AdminClient

from streams.bench import synthetic_pid
from topology.model import load_topology
from topology.plan import ensure_topics

REPO = Path(__file__).resolve().parents[2]


def adt_message(i: int, trigger: str = "A01", control: str | None = None) -> bytes:
    """A small valid ADT message for patient ``i`` (distinct demographics per ``i``)."""
    ctrl = control or f"E2E{i:08d}"
    return (
        f"MSH|^~\\&|E2E|HOSP|CLIN|HOSP|20240101120000||ADT^{trigger}^ADT_{trigger}|{ctrl}|P|2.5\r"
        f"EVN|{trigger}|20240101120000\r"
        f"{synthetic_pid(i, f'MRN{i:08d}')}\r"
        f"PV1|1|I|W^{i % 40}^1^HOSP||||1234^SMITH^JOHN|||MED||||||||V{i:08d}^^^HOSP^VN\r"
    ).encode()


def e2e_topology(name: str, pg_dsn: str | None, ndjson_dir: Path | None) -> dict[str, Any]:
    dests: list[dict[str, Any]] = []
    if pg_dsn:
        dests.append({
            "name": f"{name}-ehr",
            "purpose": "TREAT",
            "event_types": ["ADT^*"],
            "allow": ["Patient.identifier", "Patient.name", "Patient.birthDate", "Patient.gender",
                      "Encounter.identifier", "Encounter.status", "Encounter.class", "Encounter.period"],
            "sink": {"kind": "postgres", "options": {"dsn": pg_dsn, "table": f"{name}_ehr".replace("-", "_")}},
        })
    if ndjson_dir:
        dests.append({
            "name": f"{name}-billing",
            "purpose": "HPAYMT",
            "event_types": ["ADT^A01", "ADT^A04"],
            "allow": ["Patient.identifier", "Patient.name.family", "Encounter.identifier"],
            "sink": {"kind": "ndjson", "options": {"directory": str(ndjson_dir)}},
        })
    return {
        "name": name,
        "topic_defaults": {"partitions": 2, "replication_factor": 1},
        "sources": [{"name": f"{name}-feed", "kind": "mllp", "format": "hl7v2", "options": {"port": 0}}],
        "destinations": dests,
    }


@dataclass
class Pipeline:
    bootstrap: str
    workdir: Path
    topology: dict[str, Any]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    mllp_port: int | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.topology_path = self.workdir / "topology.yaml"
        self.topology_path.write_text(yaml.safe_dump(self.topology))
        topo = load_topology(self.topology_path)
        ensure_topics(topo, AdminClient({"bootstrap.servers": self.bootstrap}))
        self.env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "PYTHONUNBUFFERED": "1",
                    "CLINSTREAM_OPS_PORT": "0"}

    @property
    def source_name(self) -> str:
        return str(self.topology["sources"][0]["name"])

    def _spawn(self, key: str, args: list[str], capture_stdout: bool = False) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{key}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "clinstream.cli", *args],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE if capture_stdout else log,
            stderr=log,
        )
        self.procs[key] = proc
        return proc

    def start_source(self, port: int | None = None) -> int:
        if port is not None:
            topo = dict(self.topology)
            src = dict(topo["sources"][0])
            src["options"] = {**src["options"], "port": port}
            topo["sources"] = [src]
            self.topology_path.write_text(yaml.safe_dump(topo))
        proc = self._spawn("source", ["run", "source", "--topology", str(self.topology_path)], capture_stdout=True)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("{"):
            raise RuntimeError(f"source did not start: {(self.workdir / 'source.log').read_text()[-2000:]}")
        self.mllp_port = int(json.loads(line)["ready"][self.source_name]["port"])
        return self.mllp_port

    @property
    def worker_app_id(self) -> str:
        return f"e2e-worker-{self.run_id}"

    def start_worker(self, role: str = "all", key: str | None = None) -> None:
        """A worker of ``role`` (``run worker --role``); key ``worker``, or ``worker-<role>`` for a split one,
        unless ``key`` names it (a second worker of the same group)."""
        key = key or ("worker" if role == "all" else f"worker-{role}")
        self._spawn(key, ["run", "worker", "--topology", str(self.topology_path), "--data-dir",
                          str(self.workdir / key), "--app-id", self.worker_app_id, "--role", role])

    def start_sink(self, destination: str) -> None:
        self._spawn(f"sink-{destination}", ["run", "sink", "--topology", str(self.topology_path),
                                            "--destination", destination,
                                            "--group-id", f"e2e-sink-{destination}-{self.run_id}"])

    def kill(self, key: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(key)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def alive(self) -> dict[str, bool]:
        return {k: p.poll() is None for k, p in self.procs.items()}

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.workdir.glob("*.log")))


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())
