"""Django under gunicorn (WSGI) and uvicorn (ASGI): each request's context on its events."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path
from typing import List

import pytest

from helpers import free_port
from tracklane.collector import CollectorServer

from .conftest import ServerProcess, python, stored
from .web import check_events, send_requests

pytest.importorskip("django", reason="the Django integration is tested with Django installed")

SETTINGS = """
SECRET_KEY = "not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop_urls"
INSTALLED_APPS = ["tracklane.integrations.django"]
MIDDLEWARE = [
    "shop_auth.HeaderUserMiddleware",
    "tracklane.integrations.django.TracklaneMiddleware",
]
DATABASES = {{}}
USE_TZ = True
TRACKLANE = {{
    "write_key": {write_key!r},
    "host": {host!r},
    "flush_interval": 60,  # nothing leaves before SIGTERM but full batches
    "ip_header": "X-Forwarded-For",
    "user_id": True,
}}
"""

# Stands in for django.contrib.auth (which needs a database): an authenticated user from a
# header, set on request.user as AuthenticationMiddleware would.
AUTH = """
class User:
    def __init__(self, pk):
        self.pk = pk
        self.is_authenticated = pk is not None


class HeaderUserMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.user = User(request.headers.get("X-Test-User"))
        return self.get_response(request)
"""

URLS = """
import asyncio

import tracklane
from django.http import HttpResponse
from django.urls import path


def checkout(request):
    tracklane.track(event="Checkout", properties={"id": request.GET["id"]}, anonymous_id="anon")
    return HttpResponse("ok")


async def checkout_async(request):
    await asyncio.sleep(0)  # let other requests' tasks run in between
    tracklane.track(event="Checkout", properties={"id": request.GET["id"]}, anonymous_id="anon")
    return HttpResponse("ok")


urlpatterns = [path("checkout/", checkout), path("checkout-async/", checkout_async)]
"""


def _project(tmp_path: Path, collector: CollectorServer, write_key: str) -> None:
    settings = SETTINGS.format(write_key=write_key, host=collector.url)
    (tmp_path / "shop_settings.py").write_text(textwrap.dedent(settings))
    (tmp_path / "shop_auth.py").write_text(AUTH)
    (tmp_path / "shop_urls.py").write_text(URLS)
    (tmp_path / "shop_wsgi.py").write_text(
        "from django.core.wsgi import get_wsgi_application\napplication = get_wsgi_application()\n"
    )
    (tmp_path / "shop_asgi.py").write_text(
        "from django.core.asgi import get_asgi_application\n"
        "from tracklane.integrations.asgi import ClientLifespan\n"
        "application = ClientLifespan(get_asgi_application())\n"
    )


def test_django_under_gunicorn_puts_request_context_on_events(
    tmp_path: Path, collector: CollectorServer, write_key: str, processes: List[ServerProcess]
) -> None:
    """Under gunicorn (2 sync workers), events carry their request's ip, userAgent, page, userId."""
    _project(tmp_path, collector, write_key)
    port = free_port()
    server = ServerProcess(
        [python(), "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "shop_wsgi"],
        tmp_path,
        {"DJANGO_SETTINGS_MODULE": "shop_settings"},
    )
    processes.append(server)
    server.wait_for_port(port)
    sent = send_requests(port, "/checkout/", 30)
    assert server.stop() == 0, server.output()
    check_events(stored(collector, write_key, len(sent)), sent, port, "/checkout/")


@pytest.mark.parametrize("path", ["/checkout/", "/checkout-async/"])
def test_django_under_uvicorn_puts_request_context_on_events(
    tmp_path: Path,
    collector: CollectorServer,
    write_key: str,
    processes: List[ServerProcess],
    path: str,
) -> None:
    """Under uvicorn (ASGI), sync and async views' events carry their own request's context."""
    _project(tmp_path, collector, write_key)
    port = free_port()
    server = ServerProcess(
        [python(), "-m", "uvicorn", "--port", str(port), "shop_asgi:application"],
        tmp_path,
        {"DJANGO_SETTINGS_MODULE": "shop_settings"},
    )
    processes.append(server)
    server.wait_for_port(port)
    sent = send_requests(port, path, 30)
    # uvicorn re-raises SIGTERM after its graceful shutdown: atexit never runs, and
    # ClientLifespan's shutdown at the end of the lifespan is what delivers the events.
    assert server.stop() in (0, -signal.SIGTERM), server.output()
    check_events(stored(collector, write_key, len(sent)), sent, port, path)
