"""``terarec serve``: serve a model repository over the KServe v2 HTTP protocol."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` sub-command."""
    p = subparsers.add_parser(
        "serve", help="serve a model repository over KServe v2 HTTP (Triton-compatible)",
        description="Serve <repo>/<model>/<version>/ folders; new versions are picked up "
                    "while serving. HugeCTR Triton repositories (<model>/config.pbtxt with "
                    "backend: \"hugectr\" + an HPS ps.json) are served unchanged. "
                    "Clients: tritonclient.http, curl.")
    p.add_argument("--model-repository", "--model-repo", required=True, dest="model_repository",
                   help="folder holding <model>/<version>/config.json or HugeCTR's "
                        "<model>/config.pbtxt + <model>/<version>/")
    p.add_argument("--ps", default=None, metavar="PATH",
                   help="HPS ps.json of HugeCTR model folders (a 'ps' parameter in a "
                        "config.pbtxt wins; default <repo>/ps.json)")
    p.add_argument("--backend-config", action="append", default=[], metavar="hugectr,ps=PATH",
                   help="tritonserver's spelling of --ps")
    p.add_argument("--host", default="127.0.0.1",
                   help="bind address (default 127.0.0.1; use 0.0.0.0 to expose it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=1024,
                   help="most samples the dynamic batcher merges into one call")
    p.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="longest wait for more requests before a batch runs")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="request size limit")
    p.add_argument("--poll-interval", type=float, default=5.0,
                   help="seconds between checks for new versions (0: never)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from terarec.serving.hugectr_repository import ps_json_from_backend_configs
    from terarec.serving.server import serve

    from_backend_config = ps_json_from_backend_configs(args.backend_config)  # checked always
    ps_json = args.ps or from_backend_config
    serve(args.model_repository, host=args.host, port=args.port, ps_json=ps_json,
          poll_interval_s=args.poll_interval, max_batch_size=args.max_batch_size,
          max_delay_s=args.max_delay_ms / 1000.0,
          max_request_bytes=int(args.max_request_mb * 1024 * 1024))
    return 0
