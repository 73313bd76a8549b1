"""A service's /metrics endpoint on a thread of its own (the workers', the kvstore's; the gateway
serves its on its HTTP port): always Prometheus' text format 0.0.4.

prometheus_client's own server answers a scraper that asks for OpenMetrics (a Prometheus server
does) in OpenMetrics, where it writes every ``:`` of a sample's name as ``_``: the workers'
``grove:num_requests_waiting`` reached Prometheus as ``grove_num_requests_waiting``, and no
dashboard query found it. The text format keeps the names as they are.
"""
from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = generate_latest(self.registry)
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - scrapes are not logged
        pass


def serve_metrics_http(registry: CollectorRegistry, host: str, port: int) -> ThreadingHTTPServer:
    """Serves ``registry`` on ``host:port`` (0 picks one; ``.server_port`` says which) until
    ``.shutdown()``; every path answers with the metrics, as prometheus_client's server does."""
    host = host.strip("[]")  # an IPv6 address as gRPC writes it
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    handler = type("MetricsHandler", (_Handler,), {"registry": registry})
    server = type("MetricsServer", (ThreadingHTTPServer,), {"address_family": family})((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
