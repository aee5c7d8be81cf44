"""WSGI entry point for gunicorn: ``gunicorn -w 1 --threads 8 -b 127.0.0.1:8000 wsgi:app``.

Settings come from the environment (see deploy/env.example); the scheduler starts in the
worker that imports this module. ``hpc-billing run`` is the same process without gunicorn.
"""

from collector.runtime import wsgi_application

app = wsgi_application()
