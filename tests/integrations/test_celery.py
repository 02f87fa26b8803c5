"""Celery: a real prefork worker (2 children) on kombu's filesystem transport, then SIGTERM."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tracklane.collector import CollectorServer

from .conftest import ServerProcess, python, stored

celery = pytest.importorskip("celery", reason="the Celery integration is tested with Celery")

TASKS = """
import os

import tracklane
from celery import Celery

from tracklane.integrations.celery import setup

tracklane.write_key = {write_key!r}
tracklane.host = {host!r}
tracklane.flush_interval = 60  # only full batches leave before the worker stops
tracklane.batch_size = 100

app = Celery("shop_tasks")
app.conf.update({config!r})
setup(app, flush_after_task={flush_after_task!r})


@app.task(name="shop.track_order")
def track_order(number):
    tracklane.track("buyer", "Order Placed", {{"id": number, "pid": os.getpid()}})
    return os.getpid()
"""


def _config(folder: Path) -> Dict[str, Any]:
    queue = str(folder / "queue")
    for name in ("queue", "results", "control"):
        (folder / name).mkdir(exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": queue,
            "data_folder_out": queue,
            "control_folder": str(folder / "control"),  # else ./control in the cwd
            "polling_interval": 0.02,
        },
        "result_backend": f"file://{folder / 'results'}",
        "broker_connection_retry_on_startup": True,
    }


def _worker(folder: Path, collector: CollectorServer, write_key: str, **options: Any):
    config = _config(folder)
    (folder / "shop_tasks.py").write_text(
        TASKS.format(
            write_key=write_key,
            host=collector.url,
            config=config,
            flush_after_task=options.get("flush_after_task", False),
        )
    )
    command = [python(), "-m", "celery", "-A", "shop_tasks", "worker", "-P", "prefork", "-c", "2"]
    flags = ["--without-heartbeat", "--without-mingle", "--without-gossip", "-l", "INFO"]
    producer = celery.Celery("producer")
    producer.conf.update(config)
    return ServerProcess([*command, *flags], folder), producer


def test_prefork_worker_stores_every_event_once_after_sigterm(
    tmp_path: Path, collector: CollectorServer, write_key: str, processes: List[ServerProcess]
) -> None:
    """500 tasks over 2 forked children: each event stored once, with its task's name and id."""
    worker, producer = _worker(tmp_path, collector, write_key)
    processes.append(worker)
    results = [producer.send_task("shop.track_order", args=[i]) for i in range(500)]
    pids = celery.result.ResultSet(results).join(timeout=90, interval=0.05)
    assert len(set(pids)) == 2, "both pool children ran tasks"
    before = len(stored(collector, write_key, 500, timeout=0))
    assert before < 500, "each child still holds the events after its last full batch"
    assert worker.stop() == 0, worker.output()
    events = stored(collector, write_key, 500)
    copies = Counter(event["properties"]["id"] for event in events)
    assert set(copies) == set(range(500)), worker.output()[-3000:]
    assert max(copies.values()) == 1, "no event is stored twice"
    task_ids = {result.id: i for i, result in enumerate(results)}
    for event in events:
        assert event["context"]["celery"]["task"] == "shop.track_order"
        assert task_ids[event["context"]["celery"]["taskId"]] == event["properties"]["id"]
    assert {event["properties"]["pid"] for event in events} == set(pids)


def test_flush_after_task_delivers_while_the_worker_runs(
    tmp_path: Path, collector: CollectorServer, write_key: str, processes: List[ServerProcess]
) -> None:
    """With flush_after_task, each task's event is stored before the worker stops."""
    worker, producer = _worker(tmp_path, collector, write_key, flush_after_task=True)
    processes.append(worker)
    results = [producer.send_task("shop.track_order", args=[i]) for i in range(20)]
    celery.result.ResultSet(results).join(timeout=60, interval=0.05)
    # flush_interval=60 and batches of 100: only the flush after each task sends these.
    events = stored(collector, write_key, 20, timeout=10)
    assert worker.proc.poll() is None, "the worker is still running"
    assert sorted(event["properties"]["id"] for event in events) == list(range(20))
    assert worker.stop() == 0, worker.output()
