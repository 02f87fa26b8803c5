"""Flask under gunicorn: configured from app.config, each request's context on its events."""

from __future__ import annotations

from pathlib import Path
from typing import List

import pytest

import tracklane
from helpers import free_port
from tracklane.collector import CollectorServer

from .conftest import ServerProcess, python, stored
from .web import check_events, send_requests

flask = pytest.importorskip("flask", reason="the Flask integration is tested with Flask installed")

APP = """
import tracklane
from flask import Flask, request

from tracklane.integrations.flask import Tracklane

app = Flask(__name__)
app.config.update(
    TRACKLANE_WRITE_KEY={write_key!r},
    TRACKLANE_HOST={host!r},
    TRACKLANE_FLUSH_INTERVAL=60,
    TRACKLANE_IP_HEADER="X-Forwarded-For",
    TRACKLANE_USER_ID=lambda request: request.headers.get("X-Test-User"),
)
Tracklane(app)


@app.get("/checkout/")
def checkout():
    tracklane.track(event="Checkout", properties={{"id": request.args["id"]}}, anonymous_id="anon")
    return "ok"
"""


def test_flask_under_gunicorn_puts_request_context_on_events(
    tmp_path: Path, collector: CollectorServer, write_key: str, processes: List[ServerProcess]
) -> None:
    """Under gunicorn (2 workers, 2 threads each), events carry their own request's context."""
    (tmp_path / "shop_flask.py").write_text(APP.format(write_key=write_key, host=collector.url))
    port = free_port()
    command = [python(), "-m", "gunicorn", "-w", "2", "--threads", "2"]
    server = ServerProcess([*command, "-b", f"127.0.0.1:{port}", "shop_flask:app"], tmp_path)
    processes.append(server)
    server.wait_for_port(port)
    sent = send_requests(port, "/checkout/", 30)
    assert server.stop() == 0, server.output()
    check_events(stored(collector, write_key, len(sent)), sent, port, "/checkout/")


def test_flask_config_errors_name_the_key(default_settings: None) -> None:
    """A bad TRACKLANE_* value is refused at init_app, naming the config key."""
    from tracklane.integrations.flask import Tracklane

    app = flask.Flask("bad")
    app.config["TRACKLANE_BATCH_SIZE"] = "lots"
    with pytest.raises(tracklane.ConfigurationError, match="batch_size"):
        Tracklane(app)
    app = flask.Flask("bad-proxy")
    app.config["TRACKLANE_PROXY_COUNT"] = 0
    with pytest.raises(tracklane.ConfigurationError, match="proxy_count"):
        Tracklane(app)
