"""The HTTP API: FastAPI routes over the SchedulerServingApp facade, served by uvicorn.

``app`` builds the routes, ``access`` decides who may call them, ``errors`` makes every
error JSON, ``limits`` bounds request bodies, ``server`` runs uvicorn in a thread and
``connections`` bounds the sockets it holds.
"""

from stocksched.http.access import Access, ApiConfigError, check_bind, load_token
from stocksched.http.app import create_app
from stocksched.http.server import ApiServer, ApiStartError

__all__ = [
    "Access",
    "ApiConfigError",
    "ApiServer",
    "ApiStartError",
    "check_bind",
    "create_app",
    "load_token",
]
