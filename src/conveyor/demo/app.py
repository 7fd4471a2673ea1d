"""The demo app as ``module:attribute``, so the CLI can inspect the demo's database:

conveyor stats conveyor.demo.app:app
conveyor dlq list conveyor.demo.app:app

``$CONVEYOR_DEMO_URL`` points it at a demo run with another ``--db``.
"""

import os

from .jobs import DEFAULT_URL, URL_ENV, make_app

app = make_app(os.environ.get(URL_ENV, DEFAULT_URL))
