"""``GET /data`` and ``GET /data/{ticker}``: the stored bar series, read-only.

The same access rules as the other reads (``stocksched.http.access``). Unknown ticker
or interval: 404; a date that does not parse or a start after the end: 422; Redis
down: 503. Every error is ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response

from stocksched.data import DEFAULT_PREFIX, SeriesNotFound, bars_json, read_series, series_infos
from stocksched.facade import SchedulerServingApp
from stocksched.http.errors import error_response
from stocksched.storage.series import SeriesId
from stocksched.views import BarsView, ErrorBody, SeriesView

Ticker = Annotated[
    str,
    PathParam(
        pattern=r"^\^?[A-Za-z0-9][A-Za-z0-9.=-]{0,19}$",
        description="Yahoo symbol (case-insensitive)",
        examples=["AAPL"],
    ),
]
Day = Annotated[
    str | None,
    Query(description="exchange-local date, inclusive (YYYY-MM-DD)", examples=["2025-01-02"]),
]
_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "nothing stored for this ticker and interval"},
    422: {"model": ErrorBody, "description": "invalid date or query parameter"},
    503: {"model": ErrorBody, "description": "Redis is unavailable"},
}


def add_data_routes(app: FastAPI, facade: SchedulerServingApp, auth: list[Any]) -> None:
    extra: dict[int | str, dict[str, Any]] = {}
    if auth:
        extra[401] = {"model": ErrorBody, "description": "missing or wrong bearer token"}

    @app.get(
        "/data",
        response_model=list[SeriesView],
        tags=["data"],
        dependencies=auth,
        responses={503: _ERRORS[503], **extra},
        summary="Every stored bar series: range, bars, missing sessions, last fetch and action",
    )
    def list_series(
        prefix: Annotated[str | None, Query(description="only this storage prefix")] = None,
    ) -> list[SeriesView]:
        infos = facade.read_series(lambda store: series_infos(store, prefix))
        return [SeriesView.model_validate(i.as_dict()) for i in infos]

    @app.get(
        "/data/{ticker}",
        response_model=BarsView,
        tags=["data"],
        dependencies=auth,
        responses={**_ERRORS, **extra, 200: {"content": {"text/csv": {}}}},
        summary="A ticker's stored bars (JSON, or CSV like pandas' to_csv)",
    )
    def get_bars(
        ticker: Ticker,
        interval: Annotated[str, Query(pattern=r"^[0-9]{1,3}(m|h|d|wk|mo)$")] = "1d",
        start: Day = None,
        end: Day = None,
        format: Literal["json", "csv"] = "json",
        prefix: Annotated[str, Query(min_length=1, max_length=200)] = DEFAULT_PREFIX,
    ) -> Response:
        try:
            frame = facade.read_series(
                lambda store: read_series(store, ticker, interval, start, end, prefix)
            )
        except SeriesNotFound as exc:
            return error_response(404, str(exc))
        except ValueError as exc:
            return error_response(422, str(exc))
        if format == "csv":
            return Response(frame.to_csv(), media_type="text/csv")
        series = SeriesId(prefix, ticker.upper(), interval)
        return JSONResponse(bars_json(frame, series))
