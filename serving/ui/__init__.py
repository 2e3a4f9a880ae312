"""The managers' web page, served by the prediction service under ``/ui`` (``revcast serve``, then open
``http://127.0.0.1:3000/ui``).

Pages: at-risk accounts (``/ui/accounts``: filters by owner, region, risk band; CSV export with the same
filters at ``/ui/accounts.csv``), one account (``/ui/accounts/<id>``: score history chart, drivers,
actions), pipeline and forecast (``/ui/pipeline?by=team|rep|region&period=quarter|month``), and the
actions export for evaluation (``/ui/actions.csv``).

Sign-in: paste ``REVCAST_API_TOKEN``; the browser then holds an HMAC-signed session cookie (HttpOnly,
SameSite=Strict, Secure over https; see ``serving.ui.auth`` for why it is not Secure on plain-http
loopback). Scripts may send ``Authorization: Bearer <token>`` to the CSV endpoints instead.

Data: scores from the store ``revcast score`` writes (``serving.ui.store.default_scores_url``); names,
owners, regions, MRR, teams and the forecast from the service's dataset (``REVCAST_DATA_DIR``); actions
in ``REVCAST_UI_DB_URL`` (any SQLAlchemy URL; default ``ui_actions.db`` next to the scores store).
"""

from serving.ui.app import UiSources, create_ui_app, service_sources

#: The app the BentoML service mounts under ``/ui``; it resolves its data from the running service.
ui_app = create_ui_app()

__all__ = ["UiSources", "create_ui_app", "service_sources", "ui_app"]
