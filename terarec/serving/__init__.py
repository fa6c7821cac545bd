"""HTTP serving of trained models over the KServe v2 protocol (``terarec serve``).

Needs the ``serve`` extra (starlette, uvicorn, prometheus-client), imported only when a server
is created.
"""

from __future__ import annotations

from terarec.serving.repository import LoadedModel, ModelRepository, default_loader

__all__ = ["LoadedModel", "ModelRepository", "ServerThread", "create_app", "default_loader",
           "serve"]


def __getattr__(name: str) -> object:
    if name in ("ServerThread", "serve"):
        from terarec.serving import server

        return getattr(server, name)
    if name == "create_app":
        from terarec.serving.app import create_app

        return create_app
    raise AttributeError(name)
