"""The core imports no plugin dependency."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("redis", "aiokafka", "fastavro", "opentelemetry", "prometheus_client", "jsonschema", "pytest")


def test_import_pulls_no_backend() -> None:
    code = (
        "import sys, dotmac.events\n"
        f"heavy = {HEAVY!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
