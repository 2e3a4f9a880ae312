"""Operator-facing behaviour that needs no server: config checks, what a (re)load records, the registry's
errors, and the file the workers of one instance signal reloads through."""

from __future__ import annotations

import os

import pytest

from serving.config import ConfigError, config_from_env


class _FakeBundle:
    feature_names: list[str] = []


def _fake_registry(monkeypatch, registry: dict) -> object:
    """A resolver over ``{kind: (version, sha256 or an exception)}``; warm-up switched off."""
    import serving.service as service

    monkeypatch.setattr(service, "_warm_one", lambda kind, model, config: None)

    def resolver(kind, alias, uri):
        version, sha = registry[kind]
        if isinstance(sha, Exception):
            raise sha
        return _FakeBundle(), {"name": f"revcast-{kind}", "version": version, "sha256": sha}

    return resolver


def test_top_factors_must_not_be_negative() -> None:
    # A negative count sliced from the end: -3 listed all factors but three.
    with pytest.raises(ConfigError, match="REVCAST_TOP_FACTORS.*>= 0"):
        config_from_env({"REVCAST_TOP_FACTORS": "-3"})
    assert config_from_env({"REVCAST_TOP_FACTORS": "0"}).top_k_factors == 0
    assert config_from_env({}).top_k_factors == 5


def test_same_bytes_under_a_new_version_serve_the_new_version(monkeypatch) -> None:
    import serving.service as service

    config = config_from_env({"REVCAST_API_TOKEN": "t"})
    registry = {"win": ("3", "aaa"), "amount": ("1", "bbb"), "churn": ("1", "ccc")}
    resolver = _fake_registry(monkeypatch, registry)
    first, _ = service.load_model_set(config, resolver=resolver)
    registry["win"] = ("4", "aaa")  # the same bytes registered again and promoted
    second, outcome = service.load_model_set(config, previous=first, resolver=resolver)
    assert outcome["win"] == "swapped 3 -> 4 (same bundle bytes)"
    assert second.models["win"].version == "4"
    assert second.models["win"].bundle is first.models["win"].bundle  # not reloaded nor re-warmed
    assert outcome["churn"] == "unchanged" and second.models["churn"] is first.models["churn"]
    info = service._models_response(second, config).models["win"]
    assert info.version == "4" and info.alias_version == "4" and info.alias_differs is False


def test_a_failed_reload_is_shown_with_the_whole_error_and_the_alias_version(monkeypatch) -> None:
    import serving.service as service

    config = config_from_env({"REVCAST_API_TOKEN": "t"})
    registry: dict = {"win": ("3", "aaa"), "amount": ("1", "bbb"), "churn": ("1", "ccc")}
    resolver = _fake_registry(monkeypatch, registry)
    first, _ = service.load_model_set(config, resolver=resolver)
    error = ValueError("model.txt is truncated\nline 2 of the reason\nline 3: tree 14 has no leaves")
    error.registry_version = "5"  # as serving.registry.resolve_bundle sets it
    registry["win"] = ("5", error)
    second, outcome = service.load_model_set(config, previous=first, resolver=resolver)
    assert outcome["win"] == "kept old (3): ValueError: model.txt is truncated"
    response = service._models_response(second, config)
    win = response.models["win"]
    assert win.version == "3" and win.loaded
    assert win.alias_version == "5" and win.alias_differs is True
    assert win.last_load is not None and win.last_load.outcome == outcome["win"]
    assert win.last_load.error == f"ValueError: {error}"  # every line, not the first one only
    assert (
        response.models["churn"].alias_differs is False and response.models["churn"].last_load.error is None
    )
    # Nothing registered at start-up: no version, and the reason is shown.
    registry["churn"] = ("1", LookupError("no model registered as revcast-churn@champion"))
    third, _ = service.load_model_set(config, resolver=resolver)
    churn = service._models_response(third, config).models["churn"]
    assert not churn.loaded and churn.alias_version is None and churn.alias_differs is None
    assert churn.error == "LookupError: no model registered as revcast-churn@champion"


def test_an_unreachable_registry_is_named_not_reported_as_a_missing_model(monkeypatch) -> None:
    from serving.registry import SERVICE_HTTP_ENV, RegistryUnavailableError, model_version_by_alias

    for name, value in SERVICE_HTTP_ENV.items():  # what the service sets (MLflow's default: ~4 minutes)
        monkeypatch.setenv(name, value)
    with pytest.raises(RegistryUnavailableError) as caught:
        model_version_by_alias("win", "champion", "http://127.0.0.1:1")
    message = str(caught.value)
    assert "http://127.0.0.1:1" in message and "did not answer" in message
    assert "Connection refused" in message or "connect" in message.lower()
    assert "train it" not in message


def test_a_missing_alias_is_still_reported_as_missing(tmp_path) -> None:
    from serving.registry import ModelNotFoundError, mlflow_client, model_version_by_alias

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ModelNotFoundError, match="no model registered as revcast-win@champion"):
        model_version_by_alias("win", "champion", uri)
    mlflow_client(uri).create_registered_model("revcast-win")  # registered, but no alias yet
    with pytest.raises(ModelNotFoundError, match="revcast promote win"):
        model_version_by_alias("win", "champion", uri)


def test_reload_signal_and_runtime_dir(tmp_path) -> None:
    from serving.service import ReloadSignal, runtime_dir

    directory = runtime_dir({"REVCAST_RUNTIME_DIR": str(tmp_path)})
    assert directory.parent == tmp_path and directory.name.endswith(f"-{os.getppid()}")
    signal = ReloadSignal(directory / "reload-signal.json")
    assert signal.read() is None
    first = signal.bump("admin")
    assert signal.read() == first
    second = signal.bump("sighup")
    assert second[0] != first[0] and second[1] >= first[1] and signal.read() == second
    assert sorted(path.name for path in directory.iterdir()) == ["reload-signal.json"]  # no temp files left
    (directory / "reload-signal.json").write_text("{half a fi", encoding="utf-8")
    assert signal.read() is None
