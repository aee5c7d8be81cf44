"""The daemon (``hpc-billing run``): the scheduler and the web app, served by waitress.

``runtime.build_service`` wires both (the WSGI entry uses the same function); this
module serves the app and owns the shutdown order: on ``stop``, the scheduler first (a
running poll finishes or rolls back), then the web server.
"""

from __future__ import annotations

import logging
import threading

from waitress.server import create_server

from collector.runtime import Runtime, build_service

log = logging.getLogger("hpc_billing")

# Requests in flight get this long after the scheduler stopped.
SERVER_GRACE_S = 5.0


def serve(runtime: Runtime, stop: threading.Event) -> None:
    """Run until ``stop`` is set (SIGTERM) or the web server dies."""
    settings = runtime.settings
    service = build_service(runtime)
    host, port = settings.bind
    server = create_server(service.app, host=host, port=port, threads=settings.web_threads,
                           ident="hpc-billing", clear_untrusted_proxy_headers=True)
    try:
        service.daemon.start()
        # waitress serves from its own thread; this thread owns the shutdown order. (Its
        # loop runs while any connection is open, so a scraper's keep-alive socket must
        # not be able to hold the process after SIGTERM.)
        serving = threading.Thread(target=server.run, name="waitress", daemon=True)
        serving.start()
        log.info("serving http://%s:%d (/healthz /readyz /metrics /api/v1, %d threads)",
                 host, port, settings.web_threads)
        while not stop.wait(1.0):
            if not serving.is_alive():
                log.error("the web server stopped unexpectedly")
                break
        service.daemon.stop()
        server.close()
        serving.join(timeout=SERVER_GRACE_S)
        log.info("stopped")
    finally:
        service.daemon.stop()
