"""moto's S3 API served with HTTP keep-alive (waitress), for benchmarks of the agent's S3 mirror.

``moto_server`` runs moto under werkzeug's development server, which answers every request with ``Connection:
close``: each upload then opens a new TCP connection, in the agent and in the server (the agent's S3 delivery thread
took 6.5-6.8 ms of CPU a frame in scratch runs of the bench's folder camera, against 5.4-5.6 with this server).
AWS S3 and MinIO keep connections open, so the benchmarks serve the same moto application with waitress, which
does.
Run: ``python -m bench.s3_server --port PORT``.
"""

from __future__ import annotations

import argparse
import os

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from waitress import serve


def main(argv: list[str] | None = None) -> int:
    """Serve moto's S3 backend on ``--host``:``--port`` until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    serve(app, host=args.host, port=args.port, threads=args.threads, ident="moto", _quiet=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
