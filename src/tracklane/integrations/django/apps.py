"""The Django app: configures the default client from ``settings.TRACKLANE`` at start-up."""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

import tracklane
from tracklane.integrations._config import configure_default

from . import split_settings


class TracklaneConfig(AppConfig):
    """``INSTALLED_APPS += ["tracklane.integrations.django"]``."""

    name = "tracklane.integrations.django"
    label = "tracklane"
    verbose_name = "tracklane"

    def ready(self) -> None:
        """Set the default client's options; a bad option stops start-up, naming the key."""
        try:
            options, _ = split_settings(getattr(settings, "TRACKLANE", None))
            configure_default(options, "settings.TRACKLANE")
        except tracklane.ConfigurationError as exc:
            raise ImproperlyConfigured(str(exc)) from exc
