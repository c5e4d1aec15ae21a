"""Login throttling: django-axes' backend, tolerant of log-ins that are not HTTP requests."""

from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class LoginThrottleBackend(AxesStandaloneBackend):
    """Refuses locked-out (username, address) pairs; first in ``AUTHENTICATION_BACKENDS``.

    Every log-in over HTTP passes its request (Django's ``LoginView``, the admin), so it is counted and
    throttled. ``authenticate()`` without a request (``Client.login`` in tests, scripts, the shell) has no
    address to count and is left to the next backend instead of raising, as axes' own backend would.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username=username, password=password, **kwargs)
