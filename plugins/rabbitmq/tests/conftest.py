"""Fixtures: the shared broker at 127.0.0.1:5672 in a vhost of this session, deleted after.

``$RABBITMQ_URL`` points the tests at another broker instead. Tests that need the
broker skip when none is reachable and fail loudly when it is up and misbehaves.
"""

from __future__ import annotations

from dotmac_events_rabbitmq.testing import url_fixture

rabbitmq_url = url_fixture("session")
