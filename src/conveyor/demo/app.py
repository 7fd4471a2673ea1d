"""The demo app as ``module:attribute``, so the CLI can inspect the demo's database:

conveyor stats conveyor.demo.app:app
conveyor dlq list conveyor.demo.app:app
"""

import os

from .jobs import make_app

app = make_app(os.environ.get("CONVEYOR_DEMO_URL", "sqlite:///conveyor-demo.db"))
