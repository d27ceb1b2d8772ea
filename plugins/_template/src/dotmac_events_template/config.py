from __future__ import annotations

from attrs import field, frozen


@frozen
class TemplateConfig:
    host: str = "localhost"
    port: int = 0
    password: str | None = field(default=None, repr=False)  # secrets never in reprs
