"""The managers' web page (``/ui`` on the prediction service): at-risk accounts, pipeline and forecast,
and the actions managers take. See ``serving/ui/app.py``."""

from serving.ui.app import UiSources, create_ui_app, service_sources

#: The app the BentoML service mounts under ``/ui``; it resolves its data from the running service.
ui_app = create_ui_app()

__all__ = ["UiSources", "create_ui_app", "service_sources", "ui_app"]
