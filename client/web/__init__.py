"""The mreg web UI: browse, compare and promote in a browser (``mreg serve`` starts it; ``mreg web`` alone).

Needs the ``web`` extra (``pip install 'mreg[web]'``, included in ``server``).
"""

from __future__ import annotations

from mreg.client.web.app import WebConfig, create_app
from mreg.client.web.server import RunningWeb, start

__all__ = ["RunningWeb", "WebConfig", "create_app", "start"]
