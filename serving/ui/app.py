"""The managers' web page: an ASGI (Starlette) app mounted on the prediction service under ``/ui``.

Pages are rendered on the server (Jinja2, autoescaped); charts are inline SVG; CSS and a small JS file
ship in ``serving/ui/static`` (no CDN, works offline). Every page, CSV and form handler requires a
signed session (see ``serving.ui.auth``) or an ``Authorization: Bearer <token>`` header; without one,
the request is redirected (303) to the sign-in page and no account data is served.

Data sources are resolved per request by a ``SourcesProvider`` so that the app can run inside the
BentoML service (:func:`service_sources`, the default: the service's token and loaded dataset, the
scores store ``revcast score`` writes, the action store) or against anything a test supplies.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from serving.ui import views
from serving.ui.auth import (
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    SignInThrottle,
    session_is_valid,
    session_value,
    token_matches,
)
from serving.ui.charts import line_chart, range_bars
from serving.ui.store import (
    ACCOUNT_SCORES,
    ACTIONS,
    MAX_NOTE_CHARS,
    OPPORTUNITY_SCORES,
    ActionStore,
    ScoresReader,
    default_actions_url,
    default_scores_url,
)

logger = logging.getLogger("revcast.ui")

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
#: Rows shown per page in the at-risk table (the CSV export has them all).
PAGE_ROWS = 200


@dataclass(frozen=True)
class UiSources:
    """Everything the page reads, resolved per request.

    Attributes:
        api_token: The service's API token (None: sign-in is impossible, pages stay locked).
        tables: Canonical CRM tables for names, owners, regions, MRR, teams and the forecast (None
            when no dataset is configured or it is still loading; ``tables_note`` says which).
        tables_note: Why ``tables`` is None.
        scores_url: SQLAlchemy URL of the scores store.
        actions_url: SQLAlchemy URL of the action store.
    """

    api_token: str | None
    tables: Mapping[str, pd.DataFrame] | None
    tables_note: str | None
    scores_url: str
    actions_url: str


SourcesProvider = Callable[[], UiSources]


def service_sources() -> UiSources:
    """Sources of the running BentoML service (``bentoml.get_current_service()``)."""
    import bentoml

    service = bentoml.get_current_service()
    config = service.config
    tables = getattr(service, "_forecast_tables", None)
    note = None
    if tables is None:
        note = (
            "no dataset is configured (set REVCAST_DATA_DIR): names, owners, regions, MRR and the "
            "forecast are unavailable"
            if config.data_dir is None
            else _public_load_error(getattr(service, "_forecast_error", None))
            or "the dataset is still loading; reload shortly"
        )
    scores_url = default_scores_url()
    return UiSources(config.api_token, tables, note, scores_url, default_actions_url(scores_url))


_LOGGED_LOAD_ERRORS: set[str] = set()


def _public_load_error(detail: str | None) -> str | None:
    """What the page says when the dataset failed to load: no server paths or file contents (they stay
    in the server log, written once per distinct error)."""
    if not detail:
        return None
    if detail not in _LOGGED_LOAD_ERRORS:
        _LOGGED_LOAD_ERRORS.add(detail)
        logger.error("the web page's dataset (REVCAST_DATA_DIR) failed to load: %s", detail)
    kind = detail.split(":", 1)[0].strip()
    reason = "it failed validation" if kind == "DataValidationError" else "it could not be read"
    return (
        f"The dataset (REVCAST_DATA_DIR) could not be loaded: {reason}. Names, owners, regions, MRR and "
        "the forecast are unavailable; the server log names the file and the problem."
    )


class _Cache:
    """Per-process cache of database handles and forecasts (forecasts are keyed by the tables' identity)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.readers: dict[str, ScoresReader] = {}
        self.action_stores: dict[str, ActionStore] = {}
        self.forecasts: dict[tuple[int, str, str], dict[str, Any]] = {}

    def reader(self, url: str) -> ScoresReader:
        with self.lock:
            if url not in self.readers:
                self.readers[url] = ScoresReader(url)
            return self.readers[url]

    def actions(self, url: str) -> ActionStore:
        with self.lock:
            if url not in self.action_stores:
                self.action_stores[url] = ActionStore(url)
            return self.action_stores[url]


# --------------------------------------------------------------------------- formatting helpers


def _pct(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{float(value) * 100:.{digits}f}%"


def _money(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{float(value):,.0f}"


def _points(value: Any) -> str:
    """Change of a probability in percentage points, signed."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "new"
    return f"{float(value) * 100:+.1f} pts"


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(value)


def _date(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return str(value)[:10]


def _csv_cell(value: Any) -> Any:
    """Neutralise spreadsheet formulas in free text (CSV injection); numbers pass unchanged."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def _csv_response(frame: pd.DataFrame, filename: str) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(list(frame.columns))
    for row in frame.itertuples(index=False):
        writer.writerow([_csv_cell(value) for value in row])
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"},
    )


# --------------------------------------------------------------------------- the app


def create_ui_app(
    sources: SourcesProvider | None = None, throttle: SignInThrottle | None = None
) -> Starlette:
    """Build the web page's ASGI app.

    Args:
        sources: Resolves the token, tables and store URLs per request (default: the BentoML
            service's, :func:`service_sources`).
        throttle: Limits failed sign-ins per client address (default: 5 a minute, then a minute's wait).

    Returns:
        A Starlette app to mount under ``/ui``.
    """
    provider = sources or service_sources
    throttle = throttle or SignInThrottle()
    cache = _Cache()
    env = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=select_autoescape(default=True))
    env.filters.update(pct=_pct, money=_money, points=_points, text=_text, date=_date)

    def base_of(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    def site_root(request: Request) -> str:
        """The service's root (the page is mounted at ``<root>/ui``): BentoML's own static files live there."""
        base = base_of(request)
        return base[: -len("/ui")] if base.endswith("/ui") else ""

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(template).render(
            base=base_of(request),
            static=f"{base_of(request)}/static",
            site_root=site_root(request),
            request_path=request.url.path,
            **context,
        )
        return HTMLResponse(
            html,
            status_code=status,
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                "script-src 'self'; frame-ancestors 'none'; form-action 'self'",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
            },
        )

    def signed_in(request: Request, src: UiSources) -> bool:
        if session_is_valid(request.cookies.get(SESSION_COOKIE), src.api_token):
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token_matches(given, src.api_token)

    def to_signin(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{base_of(request)}/signin?next={quote(target, safe='')}", status_code=303)

    def same_origin(request: Request) -> bool:
        """POSTs must come from this site (the SameSite=Strict cookie already implies it in modern browsers)."""
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            return origin is None
        return urlsplit(origin).netloc == request.headers.get("host", "")

    Handler = Callable[[Request, UiSources], Awaitable[Response]]

    def protected(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            src = provider()
            if not signed_in(request, src):
                return to_signin(request)
            if request.method == "POST" and not same_origin(request):
                return HTMLResponse("cross-site form submission refused", status_code=403)
            return await handler(request, src)

        endpoint.__name__ = handler.__name__
        return endpoint

    # ------------------------------------------------------------------ sign-in

    def safe_next(request: Request, wanted: str | None) -> str:
        base = base_of(request)
        if wanted and wanted.startswith(f"{base}/") and not wanted.startswith("//") and "\\" not in wanted:
            return wanted
        return f"{base}/accounts"

    async def signin_form(request: Request) -> Response:
        src = provider()
        return page(
            request,
            "signin.html",
            next=safe_next(request, request.query_params.get("next")),
            error=None,
            configured=bool(src.api_token),
        )

    async def signin(request: Request) -> Response:
        src = provider()
        if not same_origin(request):
            return HTMLResponse("cross-site form submission refused", status_code=403)
        form = await request.form()
        target = safe_next(request, str(form.get("next") or ""))
        address = request.client.host if request.client else "unknown"
        wait_s = throttle.retry_after(address)
        if wait_s > 0:
            response = page(
                request,
                "signin.html",
                status=429,
                next=target,
                error=f"Too many failed sign-ins from this address; try again in {math.ceil(wait_s)} s.",
                configured=bool(src.api_token),
            )
            response.headers["Retry-After"] = str(math.ceil(wait_s))
            return response
        if not token_matches(str(form.get("token") or ""), src.api_token):
            throttle.failed(address)
            return page(
                request,
                "signin.html",
                status=401,
                next=target,
                error="That token is not the service's API token (REVCAST_API_TOKEN).",
                configured=bool(src.api_token),
            )
        throttle.succeeded(address)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session_value(str(src.api_token)),
            max_age=SESSION_MAX_AGE_S,
            path=base_of(request) or "/",
            httponly=True,
            samesite="strict",
            secure=_is_https(request),
        )
        return response

    async def signout(request: Request) -> Response:
        response = RedirectResponse(f"{base_of(request)}/signin", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=base_of(request) or "/")
        return response

    @protected
    async def index(request: Request, src: UiSources) -> Response:
        return RedirectResponse(f"{base_of(request)}/accounts", status_code=303)

    # ------------------------------------------------------------------ accounts

    def account_rows(src: UiSources) -> tuple[pd.DataFrame, pd.Series | None, str | None]:
        """The at-risk table of the latest run, the run, and the churn model version(s) it used."""
        reader = cache.reader(src.scores_url)
        runs = reader.runs(ACCOUNT_SCORES)
        latest = views.latest_run(runs)
        if latest is None:
            return pd.DataFrame(columns=views.AT_RISK_COLUMNS), None, None
        rows = reader.run_rows(ACCOUNT_SCORES, latest["scored_at"])
        previous = reader.account_rows_before(latest["as_of"], latest["scored_at"])
        actions = cache.actions(src.actions_url).actions()
        table = views.at_risk_table(rows, previous, src.tables, actions)
        return table, latest, views.model_versions(rows, "model_version")

    def filters_of(request: Request, frame: pd.DataFrame) -> dict[str, str]:
        """The filters asked for, normalised to the values shown in the menus.

        Raises:
            ValueError: A filter names a value no account has (the message names it and the choices).
        """
        asked = {key: request.query_params.get(key, "").strip() for key in ("owner", "region", "band")}
        allowed = {
            "owner": views.choices(frame, "owner_id"),
            "region": views.choices(frame, "region"),
            "band": list(views.BANDS),
        }
        return {key: views.normalise_filter(key, value, allowed[key]) for key, value in asked.items()}

    def data_end(src: UiSources, run: pd.Series | None) -> Any:
        """The data's latest timestamp: the loaded export's, else the scores' as_of."""
        if src.tables is not None:
            from features.labels import data_export_date

            return data_export_date(dict(src.tables))
        return None if run is None else run["as_of"]

    def bad_filter(request: Request, message: str) -> Response:
        return page(
            request,
            "message.html",
            status=422,
            nav="accounts",
            title="Invalid filter",
            message=f"{message}. Leave a filter empty for all.",
        )

    def apply_filters(frame: pd.DataFrame, filters: Mapping[str, str]) -> pd.DataFrame:
        return views.filter_rows(
            frame, owner_id=filters["owner"], region=filters["region"], risk_band=filters["band"]
        )

    @protected
    async def accounts(request: Request, src: UiSources) -> Response:
        frame, run, churn_version = await run_in_threadpool(account_rows, src)
        try:
            filters = filters_of(request, frame)
        except ValueError as exc:
            return bad_filter(request, str(exc))
        shown = apply_filters(frame, filters)
        query = urlencode({k: v for k, v in filters.items() if v})
        return page(
            request,
            "accounts.html",
            nav="accounts",
            run=run,
            rows=shown.head(PAGE_ROWS).to_dict("records"),
            n_total=len(frame),
            n_shown=len(shown),
            total_at_risk=float(shown["revenue_at_risk"].fillna(0).sum()) if len(shown) else 0.0,
            filters=filters,
            owners=views.choices(frame, "owner_id"),
            regions=views.choices(frame, "region"),
            bands=list(views.BANDS),
            csv_url=f"{base_of(request)}/accounts.csv" + (f"?{query}" if query else ""),
            tables_note=src.tables_note,
            page_rows=PAGE_ROWS,
            churn_version=churn_version,
            stale=views.staleness_notice(data_end(src, run), pd.Timestamp.now(tz="UTC")),
        )

    @protected
    async def accounts_csv(request: Request, src: UiSources) -> Response:
        frame, _, _ = await run_in_threadpool(account_rows, src)
        try:
            filters = filters_of(request, frame)
        except ValueError as exc:
            return Response(str(exc) + "\n", status_code=422, media_type="text/plain; charset=utf-8")
        shown = apply_filters(frame, filters).copy()
        shown["drivers"] = ["; ".join(d["text"] for d in drivers) for drivers in shown["drivers"]]
        return _csv_response(shown, "at-risk-accounts.csv")

    def account_detail(src: UiSources, account_id: str) -> dict[str, Any] | None:
        reader = cache.reader(src.scores_url)
        history = reader.account_history(account_id)
        if history.empty:
            return None
        latest = history.iloc[-1]
        points = views.score_history(history)
        accounts_table = None if src.tables is None else src.tables.get("accounts")
        facts: dict[str, Any] = {}
        if accounts_table is not None:
            match = accounts_table[accounts_table["account_id"].astype(str) == account_id]
            if not match.empty:
                facts = {
                    k: match.iloc[0].get(k) for k in ("name", "owner_id", "region", "industry", "segment")
                }
        mrr = views.active_mrr(src.tables, pd.Timestamp(latest["as_of"])).get(account_id)
        return {
            "account_id": account_id,
            "latest": latest.to_dict(),
            "facts": facts,
            "mrr": mrr,
            "history": points.to_dict("records"),
            "chart": line_chart(
                [str(v)[:10] for v in points["as_of"]],
                points["churn_probability"].tolist(),
                title=f"Churn probability of account {account_id} by scoring date",
            ),
            "drivers": views.plain_drivers(latest["top_factors"], "raises risk"),
            "actions": cache.actions(src.actions_url).actions(account_id).to_dict("records"),
        }

    async def render_account(
        request: Request,
        src: UiSources,
        account_id: str,
        status: int = 200,
        error: str | None = None,
        note: str = "",
    ) -> Response:
        detail = await run_in_threadpool(account_detail, src, account_id)
        if detail is None:
            return page(
                request,
                "message.html",
                status=404,
                nav="accounts",
                title="Account not found",
                message=f"No stored score for account {account_id!r}.",
            )
        return page(
            request,
            "account.html",
            status=status,
            nav="accounts",
            account=detail,
            action_choices=ACTIONS,
            error=error,
            note=note,
            max_note=MAX_NOTE_CHARS,
            tables_note=src.tables_note,
        )

    @protected
    async def account(request: Request, src: UiSources) -> Response:
        return await render_account(request, src, request.path_params["account_id"])

    @protected
    async def record_action(request: Request, src: UiSources) -> Response:
        account_id = request.path_params["account_id"]
        form = await request.form()
        action, note = str(form.get("action") or ""), str(form.get("note") or "")
        history = await run_in_threadpool(cache.reader(src.scores_url).account_history, account_id)
        if history.empty:
            return page(
                request,
                "message.html",
                status=404,
                nav="accounts",
                title="Account not found",
                message=f"No stored score for account {account_id!r}; nothing was recorded.",
            )
        latest = history.iloc[-1]
        try:
            await run_in_threadpool(
                lambda: cache.actions(src.actions_url).record(
                    account_id,
                    action,
                    note,
                    churn_probability=float(latest["churn_probability"]),
                    risk_band=latest.get("risk_band"),
                    score_as_of=str(latest["as_of"]),
                )
            )
        except ValueError as exc:
            return await render_account(request, src, account_id, status=422, error=str(exc), note=note)
        return RedirectResponse(
            f"{base_of(request)}/accounts/{quote(account_id, safe='')}#actions", status_code=303
        )

    @protected
    async def actions_csv(request: Request, src: UiSources) -> Response:
        def build() -> pd.DataFrame:
            stored = cache.actions(src.actions_url).actions()
            out = pd.DataFrame(
                {
                    "account": stored["account_id"],
                    "action": stored["action"],
                    "note": stored["note"],
                    "at": stored["at"],
                    "churn_probability_at_action": stored["churn_probability"],
                    "risk_band_at_action": stored["risk_band"],
                    "score_as_of": stored["score_as_of"],
                }
            )
            out["later_churned"] = views.later_churned(src.tables, stored).to_numpy() if len(stored) else []
            return out

        return _csv_response(await run_in_threadpool(build), "account-actions.csv")

    # ------------------------------------------------------------------ pipeline and forecast

    def pipeline_data(src: UiSources, by: str, period: str) -> dict[str, Any]:
        reader = cache.reader(src.scores_url)
        runs = reader.runs(OPPORTUNITY_SCORES)
        latest = views.latest_run(runs)
        deals = (
            reader.run_rows(OPPORTUNITY_SCORES, latest["scored_at"]) if latest is not None else pd.DataFrame()
        )
        earlier = views.comparison_run(runs)
        before = (
            reader.run_rows(OPPORTUNITY_SCORES, earlier["scored_at"])
            if earlier is not None
            else pd.DataFrame()
        )
        deals = views.with_team(deals, src.tables) if not deals.empty else deals
        forecast, forecast_error = None, src.tables_note
        if src.tables is not None:
            try:
                forecast = forecast_for(src.tables, by, period)
            except ValueError as exc:  # the engine's own reason (e.g. no history to learn from)
                forecast_error = str(exc).splitlines()[0]
        return {
            "run": latest,
            "win_version": views.model_versions(deals, "model_version"),
            "stale": views.staleness_notice(
                forecast["data_through"] if forecast else data_end(src, latest), pd.Timestamp.now(tz="UTC")
            ),
            "earlier": earlier,
            "grades": views.grade_summary(deals).to_dict("records") if not deals.empty else [],
            "deals": deals.sort_values("expected_revenue", ascending=False).head(50).to_dict("records")
            if not deals.empty
            else [],
            "n_deals": len(deals),
            "drops": views.score_drops(deals, before).to_dict("records"),
            "forecast": forecast,
            "forecast_error": forecast_error,
        }

    def forecast_for(tables: Mapping[str, pd.DataFrame], by: str, period: str) -> dict[str, Any]:
        key = (id(tables), by, period)
        with cache.lock:
            if key in cache.forecasts:
                return cache.forecasts[key]
        from serving.forecast import FORECAST_METHOD, forecast_data_range, forecast_revenue

        first, as_of = forecast_data_range(dict(tables))
        # Same call (and the same model fields) as GET /v1/forecast, so the page and the API agree.
        result = forecast_revenue(dict(tables), as_of, period=period, by=by, current_state_as_of=as_of)  # type: ignore[arg-type]
        doc = {
            "model": "forecast",
            "model_version": f"{FORECAST_METHOD}@{as_of.isoformat()}",
            "data_from": first.isoformat(),
            "data_through": as_of.isoformat(),
            **result.to_dict(),
        }
        rows = [
            {
                "group": g["group"],
                "p10": g["p10"],
                "p50": g["p50"],
                "p90": g["p90"],
                "quota": g.get("quota"),
                "attainment_p50": g.get("attainment_p50"),
                "won_to_date": g["won_to_date"],
                "n_open_deals": g.get("n_open_deals"),
            }
            for g in doc["groups"]
        ]
        doc["rows"] = rows
        doc["period_label"] = doc["groups"][0]["period"] if doc["groups"] else ""
        doc["period_start"] = doc["groups"][0].get("period_start") if doc["groups"] else None
        doc["period_end"] = doc["groups"][0].get("period_end") if doc["groups"] else None
        doc["actuals_note"] = views.period_nearly_over(doc["period_end"], doc["as_of"])
        doc["chart"] = (
            range_bars(
                rows, title=f"P50 won revenue with P10-P90 range and quota by {by}, {doc['period_label']}"
            )
            if rows
            else None
        )
        with cache.lock:
            cache.forecasts[key] = doc
        return doc

    @protected
    async def pipeline(request: Request, src: UiSources) -> Response:
        by = request.query_params.get("by", "team")
        period = request.query_params.get("period", "quarter")
        if by not in ("team", "rep", "region") or period not in ("month", "quarter"):
            return page(
                request,
                "message.html",
                status=422,
                nav="pipeline",
                title="Invalid view",
                message="by must be team, rep or region; period must be month or quarter.",
            )
        data = await run_in_threadpool(pipeline_data, src, by, period)
        return page(request, "pipeline.html", nav="pipeline", by=by, period=period, **data)

    @protected
    async def not_found(request: Request, src: UiSources) -> Response:
        return page(request, "message.html", status=404, nav="", title="Not found", message="No such page.")

    routes = [
        Route("/", index, methods=["GET"]),
        Route("/signin", signin_form, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/accounts", accounts, methods=["GET"]),
        Route("/accounts.csv", accounts_csv, methods=["GET"]),
        Route("/accounts/{account_id:str}", account, methods=["GET"]),
        Route("/accounts/{account_id:str}/actions", record_action, methods=["POST"]),
        Route("/actions.csv", actions_csv, methods=["GET"]),
        Route("/pipeline", pipeline, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
        # Last: every other path under /ui is ours too (BentoML's mount only forwards paths that match a
        # route), so unknown pages also send signed-out visitors to sign-in.
        Route("/{rest:path}", not_found, methods=["GET", "POST"]),
    ]
    return Starlette(routes=routes)


def _is_https(request: Request) -> bool:
    """The request reached us over https (uvicorn applies X-Forwarded-Proto from trusted proxies)."""
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "").lower() == "https"
