"""Training pipelines of the deal models (win probability, won amount) and the churn model.

Every pipeline is a pure function of the canonical tables plus parameters and returns a
`TrainResult` (bundle, metrics document, out-of-time test set); MLflow logging and file output
happen at the CLI edge (training/cmd_model.py).

Out-of-time evaluation (no random split, ever)
-----------------------------------------------
Training rows are snapshots "entity as of T" for a series of as-of dates T (weekly for deals,
monthly for churn; training/params.yaml). With ``export`` the latest timestamp in the data and
``gap`` the model's ``label_gap_days``:

1. *Usable dates* are the as-of dates with ``T <= export - gap`` (their labels can be observed).
2. They are cut in time order into train (oldest ``train_fraction``), calibration (next
   ``calibration_fraction``) and test (the latest, rest).
3. *Purge rule* -- no label window of an earlier slice overlaps a later slice: a training row is
   kept only when ``T <= calibration_start - gap`` **and** its label was decided before
   ``calibration_start`` (the deal closed / the churn window ``T + horizon + grace`` ended); a
   calibration row likewise with respect to ``test_start``. A test row needs its label decided
   by the export date (deals still open at the export are unlabeled and left out, and counted).
   This is what a model retrained at ``calibration_start`` could have known; the ``T`` gap keeps the
   rows near a boundary from being only the deals that closed fast.
4. LightGBM trains on the train slice, early-stops on the calibration slice, a calibrator (isotonic,
   or for ``auto`` the better of isotonic / Platt out of time inside that slice; ``fit_calibration``)
   is fitted on the calibration slice only; metrics, baselines (fitted on the same training rows),
   bootstrap intervals (clustered by opportunity / account) and the verdict come from the test slice.

The registered model is exactly the evaluated one (trained on the train slice): what is promoted is
what was measured.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

logger = logging.getLogger(__name__)

TRAINING_PARAMS_PATH = Path(__file__).with_name("params.yaml")
ModelName = Literal["win", "amount", "churn"]
MODELS: tuple[str, ...] = ("win", "amount", "churn")

# ============================================================================ configuration


def _deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_training_params(
    path: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Load the training configuration (training/params.yaml), optionally deep-merged with overrides.

    Args:
        path: YAML file; None loads the packaged training/params.yaml.
        overrides: Nested mapping merged over the file (e.g. ``{"evaluation": {"n_boot": 50}}``).

    Returns:
        The configuration as a nested dict.
    """
    with open(path or TRAINING_PARAMS_PATH, encoding="utf-8") as handle:
        params = yaml.safe_load(handle) or {}
    return _deep_merge(params, overrides or {})


def export_timestamp(tables: Mapping[str, pd.DataFrame]) -> pd.Timestamp:
    """The moment the data describes: the latest event timestamp in the tables.

    Delegates to ``features.labels.data_export_date`` so that labels, splits and scoring agree.

    Raises:
        ValueError: No timestamp at all.
    """
    from features.labels import data_export_date

    return pd.Timestamp(data_export_date(dict(tables)))


# ============================================================================ the out-of-time split


@dataclass(frozen=True)
class OutOfTimeSplit:
    """Date boundaries of the train / calibration / test slices (all inclusive) and the gap."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    calibration_start: pd.Timestamp
    calibration_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    export_at: pd.Timestamp
    label_gap_days: int
    label_gap_days_configured: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (ISO dates) for the metrics document."""
        return {
            "train_start": self.train_start.date().isoformat(),
            "train_end": self.train_end.date().isoformat(),
            "calibration_start": self.calibration_start.date().isoformat(),
            "calibration_end": self.calibration_end.date().isoformat(),
            "test_start": self.test_start.date().isoformat(),
            "test_end": self.test_end.date().isoformat(),
            "export_at": self.export_at.isoformat(),
            "label_gap_days": self.label_gap_days,
            "label_gap_days_configured": self.label_gap_days_configured or self.label_gap_days,
            "rule": (
                "train rows need as_of <= calibration_start - gap and a label decided before "
                "calibration_start; calibration rows likewise before test_start; test rows need a "
                "label decided by the export"
            ),
        }


def plan_split(
    as_of_dates: Sequence[pd.Timestamp],
    *,
    export_at: pd.Timestamp,
    label_gap_days: int,
    train_fraction: float = 0.6,
    calibration_fraction: float = 0.2,
) -> OutOfTimeSplit:
    """Cut the usable as-of dates in time order into train, calibration and test slices.

    Args:
        as_of_dates: Snapshot dates (any order).
        export_at: The export timestamp (latest timestamp in the data).
        label_gap_days: Days after T within which the label is decided; dates later than
            ``export_at - gap`` are not usable (their labels are not observable yet).
        train_fraction: Share of usable dates in the training slice (oldest).
        calibration_fraction: Share in the calibration slice (next); the rest is the test slice.

    Returns:
        The slice boundaries.

    Raises:
        ValueError: Fractions out of range, or too few usable dates for three slices that survive
            the purge gap.
    """
    if not (
        0 < train_fraction < 1 and 0 < calibration_fraction < 1 and train_fraction + calibration_fraction < 1
    ):
        raise ValueError(
            f"split fractions must be in (0, 1) and leave room for a test slice: "
            f"train={train_fraction}, calibration={calibration_fraction}"
        )
    gap = pd.Timedelta(days=int(label_gap_days))
    dates = sorted({pd.Timestamp(d) for d in as_of_dates})
    usable = [d for d in dates if d <= export_at - gap]
    if len(usable) < 6:
        raise ValueError(
            f"not enough history for an out-of-time evaluation: {len(usable)} as-of dates with observable "
            f"labels (need >= 6; data ends {export_at.date()}, label gap {label_gap_days} days)"
        )
    n_train = max(1, int(round(len(usable) * train_fraction)))
    n_calibration = max(1, int(round(len(usable) * calibration_fraction)))
    n_train = min(n_train, len(usable) - 2)
    n_calibration = min(n_calibration, len(usable) - n_train - 1)
    train, calibration, test = (
        usable[:n_train],
        usable[n_train : n_train + n_calibration],
        usable[n_train + n_calibration :],
    )
    split = OutOfTimeSplit(
        train_start=train[0],
        train_end=train[-1],
        calibration_start=calibration[0],
        calibration_end=calibration[-1],
        test_start=test[0],
        test_end=test[-1],
        export_at=pd.Timestamp(export_at),
        label_gap_days=int(label_gap_days),
    )
    if split.train_start > split.calibration_start - gap:
        raise ValueError(
            f"the training slice ({split.train_start.date()}..{split.train_end.date()}) has no date at least "
            f"{label_gap_days} days before the calibration slice starts ({split.calibration_start.date()}): "
            "more history is needed"
        )
    if split.calibration_start > split.test_start - gap:
        raise ValueError(
            f"the calibration slice ({split.calibration_start.date()}..{split.calibration_end.date()}) has no "
            f"date at least {label_gap_days} days before the test slice starts ({split.test_start.date()}): "
            "more history is needed"
        )
    return split


def plan_split_for_history(
    as_of_dates: Sequence[pd.Timestamp],
    *,
    export_at: pd.Timestamp,
    label_gap_days: int,
    train_fraction: float = 0.6,
    calibration_fraction: float = 0.2,
    min_gap_days: int = 7,
) -> OutOfTimeSplit:
    """``plan_split`` that shrinks the as-of gap when the history is too short for the configured one.

    The guarantee that matters -- no row's label is decided after the next slice starts -- is
    enforced row by row in ``assign_slices`` whatever the gap; the as-of gap only keeps rows near a
    boundary from being just the fast-closing deals. So on a short history (e.g. the 15-month Maven
    export) the gap is reduced step by step (x0.75) until three slices fit; the split then records
    ``label_gap_days_configured`` next to the gap used.

    Raises:
        ValueError: Not even ``min_gap_days`` leaves three usable slices.
    """
    gap = int(label_gap_days)
    first_error: ValueError | None = None
    while True:
        try:
            split = plan_split(
                as_of_dates,
                export_at=export_at,
                label_gap_days=gap,
                train_fraction=train_fraction,
                calibration_fraction=calibration_fraction,
            )
        except ValueError as exc:
            first_error = first_error or exc
            if gap <= min_gap_days or "fractions" in str(exc):
                raise first_error from exc
            gap = max(min_gap_days, int(gap * 0.75))
            continue
        if gap != int(label_gap_days):
            logger.warning("history too short for a %s-day label gap; using %s days", label_gap_days, gap)
        return dataclasses.replace(split, label_gap_days_configured=int(label_gap_days))


def assign_slices(as_of: pd.Series, label_decided_at: pd.Series, split: OutOfTimeSplit) -> pd.Series:
    """Slice of each snapshot row under the purge rule of the module docstring.

    Args:
        as_of: The rows' as-of dates.
        label_decided_at: When each row's label became known (deal close; T + horizon + grace for churn);
            NaT = not decided by the export (unlabeled).
        split: The slice boundaries.

    Returns:
        Series of "train", "calibration", "test" or "purged", aligned with ``as_of``.
    """
    as_of = pd.to_datetime(as_of)
    decided = pd.to_datetime(label_decided_at)
    gap = pd.Timedelta(days=split.label_gap_days)
    labeled = decided.notna() & (decided <= split.export_at)
    in_train = (
        (as_of >= split.train_start)
        & (as_of <= split.train_end)
        & (as_of <= split.calibration_start - gap)
        & labeled
        & (decided < split.calibration_start)
    )
    in_calibration = (
        (as_of >= split.calibration_start)
        & (as_of <= split.calibration_end)
        & (as_of <= split.test_start - gap)
        & labeled
        & (decided < split.test_start)
    )
    in_test = (as_of >= split.test_start) & (as_of <= split.test_end) & labeled
    slices = pd.Series("purged", index=as_of.index, dtype=object)
    slices[in_train.to_numpy()] = "train"
    slices[in_calibration.to_numpy()] = "calibration"
    slices[in_test.to_numpy()] = "test"
    return slices


def snapshot_dates(
    tables: Mapping[str, pd.DataFrame], model: str, params: Mapping[str, Any]
) -> list[pd.Timestamp]:
    """As-of dates for a model: from first activity + warm-up to the export, at the configured frequency.

    Args:
        tables: Canonical tables.
        model: "win", "amount" or "churn".
        params: Training configuration.

    Returns:
        Sorted as-of dates (midnight timestamps).
    """
    config = params["snapshots"][model]
    if model == "churn":
        starts = pd.to_datetime(tables["subscriptions"]["start_date"])
    else:
        starts = pd.to_datetime(tables["opportunities"]["created_at"])
    first = starts.min()
    if pd.isna(first):
        raise ValueError(f"no dated rows to build {model} snapshots from")
    begin = (first + pd.Timedelta(days=int(config.get("warmup_days", 0)))).normalize()
    end = export_timestamp(tables).normalize()
    try:
        from features.snapshots import as_of_dates

        dates = as_of_dates(begin, end, freq=config["freq"])
    except ImportError:  # pragma: no cover - features.snapshots is part of the package
        dates = pd.date_range(begin, end, freq=config["freq"])
    return [pd.Timestamp(d) for d in dates]


# ============================================================================ LightGBM


def lightgbm_params(
    params: Mapping[str, Any], model: str, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """LightGBM parameters of a model: common defaults + model-specific + (tuned) overrides."""
    config = params["lightgbm"]
    merged = dict(config.get("common", {}))
    merged.update({k: v for k, v in (config.get(model) or {}).items() if k != "candidates"})
    merged["seed"] = int(params.get("seed", 7))
    merged.update(overrides or {})
    return merged


def fit_booster(
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    x_valid: pd.DataFrame,
    y_valid: np.ndarray,
    lgb_params: Mapping[str, Any],
    *,
    max_rounds: int,
    early_stopping_rounds: int,
    callbacks: Sequence[Callable] = (),
    weight_train: np.ndarray | None = None,
    weight_valid: np.ndarray | None = None,
) -> Any:
    """Train a LightGBM booster with early stopping on a later (validation) slice.

    Args:
        x_train: Prepared training features (``serving.bundle.prepare_features`` output).
        y_train: Training target.
        x_valid: Prepared validation features (a later time slice).
        y_valid: Validation target.
        lgb_params: LightGBM parameters (objective, metric, ...).
        max_rounds: Upper bound on boosting rounds.
        early_stopping_rounds: Stop when the validation metric has not improved for this many rounds.
        callbacks: Extra callbacks (e.g. Optuna pruning).
        weight_train: Optional row weights of the training slice (None: all equal).
        weight_valid: Optional row weights of the validation slice (the early-stopping metric uses them).

    Returns:
        The trained ``lightgbm.Booster`` (its text model keeps only the best iteration).
    """
    import lightgbm as lgb

    categorical = [c for c in x_train.columns if isinstance(x_train[c].dtype, pd.CategoricalDtype)]
    train_set = lgb.Dataset(
        x_train,
        label=y_train,
        weight=weight_train,
        categorical_feature=categorical or "auto",
        free_raw_data=False,
    )
    valid_set = lgb.Dataset(x_valid, label=y_valid, weight=weight_valid, reference=train_set)
    booster = lgb.train(
        dict(lgb_params),
        train_set,
        num_boost_round=int(max_rounds),
        valid_sets=[valid_set],
        valid_names=["valid"],
        callbacks=[lgb.early_stopping(int(early_stopping_rounds), verbose=False), *callbacks],
    )
    # Keep only the best iteration in the saved text so that the bundle predicts with it.
    best = booster.best_iteration or booster.current_iteration()
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=best))


# ============================================================================ results


@dataclass
class TrainResult:
    """Everything a training run produced; the CLI edge logs it and writes files.

    Attributes:
        model: "win", "amount" or "churn".
        bundle: The trained model bundle (exactly the evaluated model).
        metrics: The CONTRACT §2 metrics document (``run_id`` filled in after logging).
        test_set: Out-of-time test rows: ids, as_of, features, label, model prediction, baseline
            predictions (``baseline_<name>``) and the oracle when known -- stored with the run,
            promotion re-scores it.
        split: The slice boundaries.
        log_params: Flat parameters to log (LightGBM, split, snapshot settings).
        label_column: Name of the label column in ``test_set``.
        prediction_column: Name of the prediction column in ``test_set``.
        group_column: Cluster id for bootstrap resampling (opportunity_id / account_id).
        feature_names: Model features in order.
        tuning: Summary of the Optuna study when tuning ran.
    """

    model: str
    bundle: Any
    metrics: dict[str, Any]
    test_set: pd.DataFrame
    split: OutOfTimeSplit
    log_params: dict[str, Any]
    label_column: str
    prediction_column: str
    group_column: str
    feature_names: list[str]
    tuning: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ============================================================================ shared helpers


def _verdict_rules(params: Mapping[str, Any]) -> Any:
    from training.evaluate import VerdictRules

    config = dict(params.get("evaluation", {}).get("verdict") or {})
    primary = params.get("evaluation", {}).get("primary_metrics")
    if primary:
        config["primary_metrics"] = {kind: tuple(metrics) for kind, metrics in primary.items()}
    return VerdictRules(**config)


def _label_decided_at_deals(frame: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> pd.Series:
    """When a deal snapshot's label became known: the deal's close (NaT while open at the export)."""
    closed = (
        tables["opportunities"].drop_duplicates("opportunity_id").set_index("opportunity_id")["closed_at"]
    )
    return pd.to_datetime(frame["opportunity_id"].map(closed))


def _slice_counts(slices: pd.Series) -> dict[str, int]:
    counts = slices.value_counts()
    return {name: int(counts.get(name, 0)) for name in ("train", "calibration", "test", "purged")}


def _json_factor_names(feature_names: Sequence[str]) -> dict[str, str]:
    """Plain names for explanations: ``opp_meetings_30d`` -> ``meetings 30d`` style labels."""
    display = {}
    for name in feature_names:
        label = name
        for prefix, meaning in (("opp_", "deal "), ("rep_", "rep "), ("acct_", "account ")):
            if name.startswith(prefix):
                label = meaning + name[len(prefix) :]
                break
        display[name] = label.replace("_", " ")
    return display


def _prepare(
    frame: pd.DataFrame, feature_names: Sequence[str], categories: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    from serving.bundle import prepare_features

    return prepare_features(frame, feature_names, categories)


def _tuned_overrides(
    model: str,
    x_train: pd.DataFrame,
    y_train: np.ndarray,
    as_of_train: pd.Series,
    lgb_params: Mapping[str, Any],
    params: Mapping[str, Any],
    tune_trials: int,
    tune_context: Mapping[str, Any] | None,
    label_gap_days: int = 0,
    decided_at_train: pd.Series | np.ndarray | None = None,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Optuna-tuned LightGBM overrides (time-ordered folds inside the training slice), or none.

    ``decided_at_train`` (when each training row's label became known, in row order) purges the
    tuning folds as the main split is purged: a fold trains only on labels decided before it
    validates.
    """
    if tune_trials <= 0:
        return {}, None
    from training.tune import tune_lightgbm

    study_summary = tune_lightgbm(
        x_train,
        y_train,
        as_of_train,
        base_params=lgb_params,
        params=params,
        n_trials=tune_trials,
        model=model,
        label_gap_days=label_gap_days,
        decided_at=None if decided_at_train is None else pd.Series(np.asarray(decided_at_train)),
        **dict(tune_context or {}),
    )
    return dict(study_summary["best_params"]), study_summary


def fit_calibration(
    model: str, scores: np.ndarray, labels: np.ndarray, as_of: pd.Series, params: Mapping[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Fit the probability calibrator of a classifier on its calibration slice.

    ``calibration`` in training/params.yaml: ``method`` (default for every classifier), optionally
    overridden per model in ``by_model``; ``auto`` compares ``auto_methods`` out of time inside the
    calibration slice (``training.calibrate.choose_calibrator``). The test slice never takes part.

    Args:
        model: "win" or "churn".
        scores: Uncalibrated probabilities of the calibration slice.
        labels: Its 0/1 labels.
        as_of: Its as-of dates.
        params: Training parameters.

    Returns:
        ``(fitted calibrator, {"method": ..., "chosen_by": ..., ...})`` for the metrics document.
    """
    from training.calibrate import choose_calibrator, make_calibrator

    config = dict(params.get("calibration") or {})
    method = str((config.get("by_model") or {}).get(model, config.get("method", "isotonic")))
    if method == "auto":
        methods = tuple(config.get("auto_methods") or ("isotonic", "platt"))
        return choose_calibrator(scores, labels, pd.to_datetime(as_of).to_numpy(), methods)
    return make_calibrator(method).fit(scores, labels), {"method": method, "chosen_by": "configured"}


def _classifier_pipeline(
    *,
    model: str,
    frame: pd.DataFrame,
    decided_at: pd.Series,
    label_column: str,
    group_column: str,
    feature_kind: Literal["opportunity", "account"],
    baselines: Mapping[str, Any],
    params: Mapping[str, Any],
    feature_params: Any,
    export_at: pd.Timestamp,
    tune_trials: int,
    tune_context: Mapping[str, Any] | None,
    n_rows_rejected: int,
    extra_state: Mapping[str, Any],
) -> tuple[TrainResult, pd.DataFrame]:
    """Split, fit, calibrate, compare with baselines and evaluate a binary classifier.

    Returns:
        The TrainResult (metrics without model-specific extras) and the test frame with predictions.
    """
    from features.params import categorical_columns, feature_columns
    from serving.bundle import ModelBundle, learn_categories
    from training.evaluate import evaluate_model, log_loss_score, metrics_document, paired_to_json

    gap = int(params["split"]["label_gap_days"][model])
    split = plan_split_for_history(
        frame["as_of"].unique(),
        export_at=export_at,
        label_gap_days=gap,
        train_fraction=float(params["split"]["train_fraction"]),
        calibration_fraction=float(params["split"]["calibration_fraction"]),
    )
    slices = assign_slices(frame["as_of"], decided_at, split)
    counts = _slice_counts(slices)
    train = frame[slices == "train"].reset_index(drop=True)
    calibration = frame[slices == "calibration"].reset_index(drop=True)
    test = frame[slices == "test"].reset_index(drop=True)
    for name, part in (("training", train), ("calibration", calibration), ("test", test)):
        if part.empty or part[label_column].nunique() < 2:
            raise ValueError(
                f"{model}: the {name} slice has {len(part)} rows and "
                f"{int(part[label_column].sum()) if len(part) else 0} positives: both classes are needed "
                f"(split {split.to_dict()})"
            )

    feature_names = feature_columns(feature_kind, frame, feature_params)
    categorical = [c for c in categorical_columns(feature_kind, feature_params) if c in feature_names]
    categories = learn_categories(train, categorical)
    x_train = _prepare(train, feature_names, categories)
    x_calibration = _prepare(calibration, feature_names, categories)
    y_train = train[label_column].to_numpy(dtype=float)
    y_calibration = calibration[label_column].to_numpy(dtype=float)
    y_test = test[label_column].to_numpy(dtype=float)

    lgb_params = lightgbm_params(params, model)
    overrides, tuning = _tuned_overrides(
        model,
        x_train,
        y_train,
        train["as_of"],
        lgb_params,
        params,
        tune_trials,
        tune_context,
        split.label_gap_days,
        decided_at_train=decided_at[slices == "train"].to_numpy(),
    )
    # The configured parameter sets, and the tuned one when --tune ran, compete on the calibration
    # slice (log loss of the uncalibrated probabilities); the test slice plays no part in the choice.
    # Tuning only sees the training slice's time-ordered folds, which can be small or unrepresentative:
    # it must not be able to make the model worse than the configured defaults on later data.
    candidate_sets = {
        **({"tuned": overrides} if tuning else {}),
        "configured": {},
        **(params["lightgbm"][model].get("candidates") or {}),
    }
    candidate_log_loss: dict[str, float] = {}
    boosters: dict[str, Any] = {}
    for name, candidate in candidate_sets.items():
        boosters[name] = fit_booster(
            x_train,
            y_train,
            x_calibration,
            y_calibration,
            {**lgb_params, **candidate},
            max_rounds=int(params["lightgbm"]["max_boost_rounds"]),
            early_stopping_rounds=int(params["lightgbm"]["early_stopping_rounds"]),
        )
        candidate_log_loss[name] = log_loss_score(y_calibration, boosters[name].predict(x_calibration))
    chosen = min(candidate_log_loss, key=candidate_log_loss.get)
    lgb_params.update(candidate_sets[chosen])
    booster = boosters[chosen]
    calibrator, calibration_choice = fit_calibration(
        model, booster.predict(x_calibration), y_calibration, calibration["as_of"], params
    )
    bundle = ModelBundle.from_booster(
        booster,
        model=model,
        kind="classifier",
        feature_names=feature_names,
        categorical=categories,
        calibration=calibrator.to_json(),
        display_names=_json_factor_names(feature_names),
        extra={
            "trained_as_of": split.train_end.date().isoformat(),
            "split": split.to_dict(),
            "grades": dict(params["scoring"]["grades"]),
            "risk_bands": dict(params["scoring"]["risk_bands"]),
            "best_iteration": int(booster.current_iteration()),
            **dict(extra_state),
        },
    )
    p_test = bundle.predict(test)

    baseline_predictions: dict[str, np.ndarray] = {}
    baseline_calibration: dict[str, str] = {}
    for name, estimator in baselines.items():
        # Baselines see exactly the model's features (never ids, labels or value columns), and are
        # recalibrated on the calibration slice as the model is: the model's own calibration step
        # must not count as a gain over them (raw logistic regression fitted on an older win or churn
        # rate scores a much worse Brier than it would recalibrated).
        fitted = estimator.fit(train[feature_names], y_train)
        raw_calibration = np.asarray(fitted.predict_proba(calibration[feature_names])[:, 1], dtype=float)
        raw_test = np.asarray(fitted.predict_proba(test[feature_names])[:, 1], dtype=float)
        baseline_calibrator, choice = fit_calibration(
            model, raw_calibration, y_calibration, calibration["as_of"], params
        )
        baseline_predictions[name] = np.clip(
            np.asarray(baseline_calibrator.predict(raw_test), dtype=float), 0, 1
        )
        baseline_calibration[name] = str(choice.get("method"))

    evaluation = evaluate_model(
        "classifier",
        y_test,
        p_test,
        baseline_predictions,
        groups=test[group_column].to_numpy(),
        # The data minimums count deals / accounts, not their weekly or monthly snapshots (Dynamics'
        # "40 won and 40 lost deals"): one won deal seen in 12 snapshots is one example.
        n_positive=int(train.loc[y_train == 1, group_column].nunique()),
        n_negative=int(train.loc[y_train == 0, group_column].nunique()),
        n_boot=int(params["evaluation"]["n_boot"]),
        seed=int(params.get("seed", 7)),
        rules=_verdict_rules(params),
    )
    test_set = test.copy()
    test_set["prediction"] = p_test
    for name, values in baseline_predictions.items():
        test_set[f"baseline_{name}"] = values

    document = metrics_document(
        model,
        "out_of_time",
        n_train=len(train),
        n_test=len(test),
        n_rows_rejected=n_rows_rejected,
        model_metrics=evaluation.model_metrics,
        baselines=evaluation.baselines,
        intervals=evaluation.intervals,
        verdict=evaluation.verdict,
        reasons=evaluation.reasons,
        run_id=None,
        split=split.to_dict(),
        n_calibration=len(calibration),
        rows_per_slice=counts,
        paired=paired_to_json(evaluation.paired),
        n_features=len(feature_names),
        best_iteration=int(booster.current_iteration()),
        tuned=bool(tuning),
        lightgbm_candidate=chosen,
        candidates_calibration_log_loss=candidate_log_loss,
        calibration_method=calibration_choice["method"],
        calibration_choice=calibration_choice,
        baselines_recalibrated=baseline_calibration,
        n_train_positive_entities=int(train.loc[y_train == 1, group_column].nunique()),
        n_train_negative_entities=int(train.loc[y_train == 0, group_column].nunique()),
    )
    document["reasons"] = list(evaluation.reasons)
    log_params = {
        **{f"lgb.{k}": v for k, v in lgb_params.items()},
        "split.label_gap_days": split.label_gap_days,
        "split.train_fraction": params["split"]["train_fraction"],
        "split.calibration_fraction": params["split"]["calibration_fraction"],
        "snapshots.freq": params["snapshots"][model]["freq"],
        "n_features": len(feature_names),
        "best_iteration": int(booster.current_iteration()),
        "tune_trials": tune_trials,
        "calibration.method": calibration_choice["method"],
    }
    result = TrainResult(
        model=model,
        bundle=bundle,
        metrics=document,
        test_set=test_set,
        split=split,
        log_params=log_params,
        label_column=label_column,
        prediction_column="prediction",
        group_column=group_column,
        feature_names=feature_names,
        tuning=tuning,
    )
    return result, test_set


# ============================================================================ baselines


def default_baselines(model: str, tables: Mapping[str, pd.DataFrame], feature_params: Any) -> dict[str, Any]:
    """Unfitted baselines of a model, fitted by the pipeline on the same training rows as the model.

    Args:
        model: "win", "amount" or "churn".
        tables: Canonical tables (the list-price baseline reads the optional ``products`` table).
        feature_params: Feature parameters (categorical / numeric feature lists).

    Returns:
        ``{name: estimator}`` with ``fit(X, y)`` and ``predict_proba`` (classifiers) or ``predict``.
    """
    from features.params import categorical_columns
    from training import baselines as bl

    if model == "win":
        categorical = categorical_columns("opportunity", feature_params)
        return {
            "base_rate": bl.BaseRateBaseline(),
            "stage_rate": bl.StageRateBaseline(stage_column="opp_stage"),
            "naive_bayes": bl.NaiveBayesFrequencyBaseline(columns=categorical),
            "logistic_regression": bl.LogisticRegressionBaseline(categorical_columns=categorical),
        }
    if model == "churn":
        categorical = categorical_columns("account", feature_params)
        return {
            "base_rate": bl.BaseRateBaseline(),
            "logistic_regression": bl.LogisticRegressionBaseline(categorical_columns=categorical),
            "rule_of_thumb": bl.RuleOfThumbChurnBaseline(),
        }
    if model == "amount":
        return {
            "as_of_amount": bl.AsOfAmountBaseline(amount_column="opp_amount"),
            "list_price": bl.ListPriceBaseline(product_column="opp_product", products=tables.get("products")),
        }
    raise ValueError(f"unknown model {model!r}; expected one of {MODELS}")


# ============================================================================ oracles (synthetic data only)


def win_oracle(test: pd.DataFrame, truth: Mapping[str, pd.DataFrame] | None) -> np.ndarray | None:
    """True win probability of each snapshot from the generator's truth: ``p_win_from_<stage at T>``.

    Args:
        test: Snapshot rows with ``opportunity_id`` and ``opp_stage``.
        truth: ``{"opportunities": frame, ...}`` read from ``<data>/truth`` (None when absent).

    Returns:
        Oracle probabilities aligned with ``test`` or None when the truth is missing or incomplete.
    """
    if not truth or "opportunities" not in truth:
        return None
    table = truth["opportunities"].copy()
    table["opportunity_id"] = table["opportunity_id"].astype(str)
    table = table.drop_duplicates("opportunity_id").set_index("opportunity_id")
    stage_columns = {c[len("p_win_from_") :]: c for c in table.columns if c.startswith("p_win_from_")}
    if not stage_columns:
        return None
    rows = table.reindex(test["opportunity_id"].astype(str))
    oracle = np.full(len(test), np.nan)
    stages = test["opp_stage"].astype(object).to_numpy()
    for stage, column in stage_columns.items():
        mask = stages == stage
        oracle[mask] = rows[column].to_numpy(dtype=float)[mask]
    if "p_win_at_creation" in table.columns:
        missing = np.isnan(oracle)
        oracle[missing] = rows["p_win_at_creation"].to_numpy(dtype=float)[missing]
    if np.isnan(oracle).mean() > 0.01:
        logger.warning(
            "win oracle missing for %.1f%% of test rows; no oracle block", 100 * np.isnan(oracle).mean()
        )
        return None
    return np.nan_to_num(oracle, nan=float(np.nanmean(oracle)))


def churn_oracle(test: pd.DataFrame, truth: Mapping[str, pd.DataFrame] | None) -> np.ndarray | None:
    """True churn-label probability per (account, snapshot month) from ``truth/accounts_churn.csv``.

    Returns:
        Oracle probabilities aligned with ``test`` or None when absent or incomplete.
    """
    if not truth or "accounts_churn" not in truth:
        return None
    table = truth["accounts_churn"].copy()
    date_column = next((c for c in ("period_start", "as_of", "month", "date") if c in table.columns), None)
    candidates = [c for c in table.columns if c not in ("account_id", date_column)]
    prob_column = next(
        (c for c in candidates if c.startswith("p_churn")),
        next((c for c in candidates if "prob" in c.lower()), None),
    )
    if date_column is None or prob_column is None:
        logger.warning("truth/accounts_churn.csv: no date/probability column recognised; no oracle block")
        return None
    table["account_id"] = table["account_id"].astype(str)
    table["_month"] = pd.to_datetime(table[date_column]).dt.to_period("M")
    lookup = table.drop_duplicates(["account_id", "_month"]).set_index(["account_id", "_month"])[prob_column]
    keys = pd.MultiIndex.from_arrays(
        [test["account_id"].astype(str), pd.to_datetime(test["as_of"]).dt.to_period("M")]
    )
    oracle = lookup.reindex(keys).to_numpy(dtype=float)
    if np.isnan(oracle).mean() > 0.01:
        logger.warning(
            "churn oracle missing for %.1f%% of test rows; no oracle block", 100 * np.isnan(oracle).mean()
        )
        return None
    return np.nan_to_num(oracle, nan=float(np.nanmean(oracle)))


def _oracle_block(y: np.ndarray, p_model: np.ndarray, p_oracle: np.ndarray | None) -> dict[str, Any] | None:
    if p_oracle is None:
        return None
    from training.evaluate import classification_metrics, oracle_summary

    summary = oracle_summary(y, p_model, p_oracle)
    oracle_metrics = classification_metrics(y, p_oracle)
    summary.update({"oracle_ece": oracle_metrics["ece"], "oracle_log_loss": oracle_metrics["log_loss"]})
    return summary


# ============================================================================ the pipelines


def _feature_params(feature_params: Any) -> Any:
    if feature_params is not None:
        return feature_params
    from features.params import load_params

    return load_params()


def train_win_model(
    tables: Mapping[str, pd.DataFrame],
    params: Mapping[str, Any] | None = None,
    *,
    tune_trials: int = 0,
    truth: Mapping[str, pd.DataFrame] | None = None,
    feature_params: Any = None,
    n_rows_rejected: int = 0,
    tune_context: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train and evaluate the win-probability model on weekly snapshots of open deals.

    Args:
        tables: Canonical tables (accounts, opportunities, optional history and activities...).
        params: Training configuration (default: training/params.yaml).
        tune_trials: Optuna trials (0 = configured LightGBM defaults).
        truth: Generator ground truth (``{"opportunities": ...}``) for the oracle comparison.
        feature_params: Feature parameters (default: features/params.yaml).
        n_rows_rejected: Rows the loader skipped (reported in the metrics document).
        tune_context: Extra keyword arguments for ``training.tune.tune_lightgbm`` (storage, study name).

    Returns:
        The TrainResult; ``metrics`` is the CONTRACT §2 document (plus ``oracle`` when truth is given).
    """
    from features.snapshots import build_win_training_set

    params = params or load_training_params()
    feature_params = _feature_params(feature_params)
    export_at = export_timestamp(tables)
    dates = snapshot_dates(tables, "win", params)
    frame = build_win_training_set(tables, dates, feature_params)
    decided_at = _label_decided_at_deals(frame, tables)
    result, test = _classifier_pipeline(
        model="win",
        frame=frame,
        decided_at=decided_at,
        label_column="label_won",
        group_column="opportunity_id",
        feature_kind="opportunity",
        baselines=default_baselines("win", tables, feature_params),
        params=params,
        feature_params=feature_params,
        export_at=export_at,
        tune_trials=tune_trials,
        tune_context=tune_context,
        n_rows_rejected=n_rows_rejected,
        extra_state={},
    )
    oracle = win_oracle(test, truth)
    if oracle is not None:
        test["oracle"] = oracle
        result.metrics["oracle"] = _oracle_block(
            test["label_won"].to_numpy(float), test["prediction"].to_numpy(), oracle
        )
        result.metrics["lift_captured"] = result.metrics["oracle"]["lift_captured"]
    result.test_set = test
    return result


def train_churn_model(
    tables: Mapping[str, pd.DataFrame],
    params: Mapping[str, Any] | None = None,
    *,
    tune_trials: int = 0,
    truth: Mapping[str, pd.DataFrame] | None = None,
    feature_params: Any = None,
    n_rows_rejected: int = 0,
    tune_context: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train and evaluate the churn model on monthly snapshots of active accounts.

    Besides the classification metrics, the document carries ``revenue_at_risk_capture_top_decile``:
    the share of next-period churned ARR held by the 10 % of accounts with the highest predicted
    revenue at risk (ARR x p), for the model and for every baseline.

    Args: see ``train_win_model`` (truth: ``{"accounts_churn": ...}``).

    Returns:
        The TrainResult.
    """
    from features.snapshots import build_churn_training_set
    from training.evaluate import revenue_capture_top_decile

    params = params or load_training_params()
    feature_params = _feature_params(feature_params)
    export_at = export_timestamp(tables)
    dates = snapshot_dates(tables, "churn", params)
    frame = build_churn_training_set(tables, dates, feature_params)
    labels = feature_params.labels
    window = pd.Timedelta(days=int(labels.churn_horizon_days) + int(labels.churn_grace_days))
    decided_at = pd.to_datetime(frame["as_of"]) + window
    decided_at = decided_at.where(frame["label_churn"].notna())
    result, test = _classifier_pipeline(
        model="churn",
        frame=frame,
        decided_at=decided_at,
        label_column="label_churn",
        group_column="account_id",
        feature_kind="account",
        baselines=default_baselines("churn", tables, feature_params),
        params=params,
        feature_params=feature_params,
        export_at=export_at,
        tune_trials=tune_trials,
        tune_context=tune_context,
        n_rows_rejected=n_rows_rejected,
        extra_state={
            "horizon_days": int(labels.churn_horizon_days),
            "grace_days": int(labels.churn_grace_days),
        },
    )
    arr = test["arr"].to_numpy(dtype=float)
    churned_arr = arr * test["label_churn"].to_numpy(dtype=float)
    test["revenue_at_risk"] = arr * test["prediction"].to_numpy()
    capture = {"model": revenue_capture_top_decile(test["revenue_at_risk"], churned_arr)}
    for column in [c for c in test.columns if c.startswith("baseline_")]:
        capture[column[len("baseline_") :]] = revenue_capture_top_decile(
            arr * test[column].to_numpy(), churned_arr
        )
    result.metrics["revenue_at_risk_capture_top_decile"] = capture
    result.metrics["revenue_capture_beats_every_baseline"] = bool(
        all(capture["model"] > value for name, value in capture.items() if name != "model")
    )
    oracle = churn_oracle(test, truth)
    if oracle is not None:
        test["oracle"] = oracle
        result.metrics["oracle"] = _oracle_block(
            test["label_churn"].to_numpy(float), test["prediction"].to_numpy(), oracle
        )
        result.metrics["lift_captured"] = result.metrics["oracle"]["lift_captured"]
        capture["oracle"] = revenue_capture_top_decile(arr * oracle, churned_arr)
    result.test_set = test
    return result


def plan_amount_ratio_target(
    params: Mapping[str, Any],
    train: pd.DataFrame,
    calibration: pd.DataFrame,
    feature_names: Sequence[str],
) -> dict[str, Any]:
    """Whether (and how) the amount model may learn the ratio won amount / as-of amount.

    Configured in ``amount_target`` of training/params.yaml: ``ratio_feature`` (the as-of amount
    feature), ``candidates`` (LightGBM overrides fitted on the ratio), ``min_rows`` (rows with a usable
    as-of amount needed in both the training and the calibration slice; data without an amount
    history, e.g. Maven, has none and keeps the direct candidates only).

    Args:
        params: Training parameters.
        train: Won-deal rows of the training slice (features + ``label_won_amount``).
        calibration: Won-deal rows of the calibration slice.
        feature_names: Model features.

    Returns:
        ``{"target": target transform JSON or None, "candidates": {name: overrides}, "feature": str,
        "note": why the ratio candidates are or are not compared}``. The fallback (rows without a
        positive as-of amount) is the median won amount of the training slice.
    """
    from serving.bundle import TARGET_RATIO_TO_FEATURE, ratio_denominator

    config = dict(params.get("amount_target") or {})
    feature = str(config.get("ratio_feature", "opp_amount"))
    candidates = dict(config.get("candidates") or {})
    min_rows = int(config.get("min_rows", 40))
    plan: dict[str, Any] = {"target": None, "candidates": candidates, "feature": feature}
    if not candidates:
        plan["note"] = "no ratio candidates configured (amount_target.candidates)"
        return plan
    if feature not in feature_names:
        plan["note"] = f"ratio feature {feature!r} is not a model feature"
        return plan
    usable = {
        name: int(np.isfinite(ratio_denominator(part, feature)).sum())
        for name, part in (("training", train), ("calibration", calibration))
    }
    short = [f"{name} {count}" for name, count in usable.items() if count < min_rows]
    if short:
        plan["note"] = f"too few rows with a positive {feature} ({', '.join(short)} < {min_rows})"
        return plan
    plan["target"] = {
        "kind": TARGET_RATIO_TO_FEATURE,
        "feature": feature,
        "fallback": {
            "kind": "constant",
            "value": float(np.median(train["label_won_amount"].to_numpy(dtype=float))),
            "source": "median won amount of the training slice",
        },
        "explain_space": f"contributions are on the ratio won amount / {feature}, not on the amount",
    }
    plan["note"] = f"ratio candidates compared ({usable['training']} training rows with a positive {feature})"
    return plan


def amount_ratio_rows(
    target: Mapping[str, Any], frame: pd.DataFrame, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows that can learn a ratio target, their ratio labels and their ratio bases (as-of amounts).

    Args:
        target: A ``ratio_to_feature`` target transform (see ``serving.bundle``).
        frame: Rows holding the ratio feature.
        labels: Won amounts of ``frame``'s rows.

    Returns:
        ``(boolean row mask, labels / base of those rows, base of those rows)``.
    """
    from serving.bundle import ratio_denominator

    base = ratio_denominator(frame, str(target["feature"]))
    rows = np.isfinite(base)
    return rows, np.asarray(labels, dtype=float)[rows] / base[rows], base[rows]


def train_amount_model(
    tables: Mapping[str, pd.DataFrame],
    params: Mapping[str, Any] | None = None,
    *,
    tune_trials: int = 0,
    truth: Mapping[str, pd.DataFrame] | None = None,
    feature_params: Any = None,
    n_rows_rejected: int = 0,
    tune_context: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train and evaluate the won-amount model: ``label_won_amount`` of deals that were won.

    Trained on snapshots of won deals only (it answers "how much, if won"; expected revenue =
    win probability x expected amount). The LightGBM objective is chosen among the configured
    candidates (``lightgbm.amount.candidates``: gamma, tweedie, L2, L2 with linear trees) by WAPE on the won
    deals of the calibration slice; the choice and every candidate's WAPE are in the document.
    The same comparison includes ratio candidates (``amount_target``, see ``plan_amount_ratio_target``):
    boosters that learn won amount / as-of amount; the bundle of a chosen ratio candidate stores the
    ``target`` transform (``serving.bundle``) so that ``predict`` multiplies back by the as-of amount.
    Evaluated on the won deals of the test slice against the as-of amount and the list price.

    Args: see ``train_win_model`` (truth is unused: the generator has no amount oracle).

    Returns:
        The TrainResult (regression metrics: mae, rmse, wape, bias).
    """
    from features.params import categorical_columns, feature_columns
    from features.snapshots import build_win_training_set
    from serving.bundle import ModelBundle, apply_target_transform, learn_categories, ratio_denominator
    from training.evaluate import evaluate_model, metrics_document, paired_to_json, regression_metrics

    del truth  # no amount oracle in the generator's truth
    params = params or load_training_params()
    feature_params = _feature_params(feature_params)
    export_at = export_timestamp(tables)
    dates = snapshot_dates(tables, "amount", params)
    snapshots = build_win_training_set(tables, dates, feature_params)
    amount = pd.to_numeric(snapshots["label_won_amount"], errors="coerce")
    won = snapshots[(snapshots["label_won"] == 1) & amount.notna() & (amount > 0)].reset_index(drop=True)
    if won.empty:
        raise ValueError("amount: no won deals with a positive won_amount to learn from")
    decided_at = _label_decided_at_deals(won, tables)
    gap = int(params["split"]["label_gap_days"]["amount"])
    split = plan_split_for_history(
        won["as_of"].unique(),
        export_at=export_at,
        label_gap_days=gap,
        train_fraction=float(params["split"]["train_fraction"]),
        calibration_fraction=float(params["split"]["calibration_fraction"]),
    )
    slices = assign_slices(won["as_of"], decided_at, split)
    train = won[slices == "train"].reset_index(drop=True)
    calibration = won[slices == "calibration"].reset_index(drop=True)
    test = won[slices == "test"].reset_index(drop=True)
    for name, part in (("training", train), ("calibration", calibration), ("test", test)):
        if part.empty:
            raise ValueError(f"amount: the {name} slice has no won deals (split {split.to_dict()})")

    feature_names = feature_columns("opportunity", won, feature_params)
    categorical = [c for c in categorical_columns("opportunity", feature_params) if c in feature_names]
    categories = learn_categories(train, categorical)
    x_train = _prepare(train, feature_names, categories)
    x_calibration = _prepare(calibration, feature_names, categories)
    y_train = train["label_won_amount"].to_numpy(dtype=float)
    y_calibration = calibration["label_won_amount"].to_numpy(dtype=float)
    y_test = test["label_won_amount"].to_numpy(dtype=float)

    max_rounds = int(params["lightgbm"]["max_boost_rounds"])
    early_stopping_rounds = int(params["lightgbm"]["early_stopping_rounds"])
    ratio_plan = plan_amount_ratio_target(params, train, calibration, feature_names)

    def fit_candidate(target: Mapping[str, Any] | None, lgb_params: Mapping[str, Any]) -> Any:
        if target is None:
            return fit_booster(
                x_train,
                y_train,
                x_calibration,
                y_calibration,
                lgb_params,
                max_rounds=max_rounds,
                early_stopping_rounds=early_stopping_rounds,
            )
        # Ratio target on the rows that have a usable as-of amount, weighted by that amount: the
        # weighted L1 of the ratio is then proportional to the WAPE of the amount.
        rows_train, ratio_train, base_train = amount_ratio_rows(target, train, y_train)
        rows_cal, ratio_cal, base_cal = amount_ratio_rows(target, calibration, y_calibration)
        return fit_booster(
            x_train[rows_train],
            ratio_train,
            x_calibration[rows_cal],
            ratio_cal,
            lgb_params,
            max_rounds=max_rounds,
            early_stopping_rounds=early_stopping_rounds,
            weight_train=base_train,
            weight_valid=base_cal,
        )

    candidates: dict[str, dict[str, Any]] = {}
    boosters: dict[str, Any] = {}
    targets: dict[str, dict[str, Any] | None] = {}
    candidate_overrides: dict[str, Mapping[str, Any]] = {}
    for objective, overrides in params["lightgbm"]["amount"]["candidates"].items():
        targets[objective], candidate_overrides[objective] = None, overrides
    for name, overrides in (ratio_plan["candidates"] if ratio_plan["target"] is not None else {}).items():
        if name in targets:
            raise ValueError(f"amount: ratio candidate {name!r} has the name of a direct candidate")
        targets[name], candidate_overrides[name] = ratio_plan["target"], overrides
    for name, target in targets.items():
        booster = fit_candidate(target, lightgbm_params(params, "amount", candidate_overrides[name]))
        boosters[name] = booster
        # Every candidate is scored on all calibration rows in amount space, ratio candidates
        # through the same transform (and fallback) the bundle applies at serving time.
        calibration_prediction = apply_target_transform(target, booster.predict(x_calibration), calibration)
        candidates[name] = regression_metrics(y_calibration, calibration_prediction)
    chosen = min(candidates, key=lambda name: candidates[name]["wape"])
    chosen_target = targets[chosen]
    lgb_params = lightgbm_params(params, "amount", candidate_overrides[chosen])
    tuning = None
    if tune_trials > 0:
        decided_train = decided_at[slices == "train"].to_numpy()
        if chosen_target is None:
            x_tune, y_tune, as_of_tune, tune_model = x_train, y_train, train["as_of"], "amount"
            decided_tune = decided_train
        else:
            # The study sees the ratio (unweighted: tune_lightgbm has no row weights).
            rows_tune, y_tune, _ = amount_ratio_rows(chosen_target, train, y_train)
            x_tune, as_of_tune, tune_model = x_train[rows_tune], train["as_of"][rows_tune], "amount_ratio"
            decided_tune = decided_train[np.asarray(rows_tune)]
        overrides, tuning = _tuned_overrides(
            tune_model,
            x_tune,
            y_tune,
            as_of_tune,
            lgb_params,
            params,
            tune_trials,
            tune_context,
            split.label_gap_days,
            decided_at_train=decided_tune,
        )
        # As for the classifiers: the tuned set must beat the configured one on the calibration
        # slice (WAPE in amount space), or the configured booster stays.
        tuned_booster = fit_candidate(chosen_target, {**lgb_params, **overrides})
        tuned_wape = regression_metrics(
            y_calibration,
            apply_target_transform(chosen_target, tuned_booster.predict(x_calibration), calibration),
        )["wape"]
        tuning["calibration_wape"] = {
            "tuned": float(tuned_wape),
            "configured": float(candidates[chosen]["wape"]),
        }
        if tuned_wape < candidates[chosen]["wape"]:
            lgb_params.update(overrides)
            boosters[chosen] = tuned_booster
            tuning["kept"] = "tuned"
        else:
            tuning["kept"] = "configured"
    booster = boosters[chosen]
    extra: dict[str, Any] = {
        "trained_as_of": split.train_end.date().isoformat(),
        "split": split.to_dict(),
        "objective": chosen,
        "best_iteration": int(booster.current_iteration()),
    }
    if chosen_target is not None:
        extra["target"] = chosen_target
    bundle = ModelBundle.from_booster(
        booster,
        model="amount",
        kind="regressor",
        feature_names=feature_names,
        categorical=categories,
        calibration=None,
        display_names=_json_factor_names(feature_names),
        extra=extra,
    )
    prediction = bundle.predict(test)
    baseline_predictions = {}
    for name, estimator in default_baselines("amount", tables, feature_params).items():
        fitted = estimator.fit(train[feature_names], y_train)
        baseline_predictions[name] = np.asarray(fitted.predict(test[feature_names]), dtype=float)
    evaluation = evaluate_model(
        "regressor",
        y_test,
        prediction,
        baseline_predictions,
        groups=test["opportunity_id"].to_numpy(),
        n_examples=len(train),
        n_boot=int(params["evaluation"]["n_boot"]),
        seed=int(params.get("seed", 7)),
        rules=_verdict_rules(params),
    )
    test_set = test.copy()
    test_set["prediction"] = prediction
    for name, values in baseline_predictions.items():
        test_set[f"baseline_{name}"] = values
    document = metrics_document(
        "amount",
        "out_of_time",
        n_train=len(train),
        n_test=len(test),
        n_rows_rejected=n_rows_rejected,
        model_metrics=evaluation.model_metrics,
        baselines=evaluation.baselines,
        intervals=evaluation.intervals,
        verdict=evaluation.verdict,
        reasons=evaluation.reasons,
        run_id=None,
        split=split.to_dict(),
        n_calibration=len(calibration),
        rows_per_slice=_slice_counts(slices),
        paired=paired_to_json(evaluation.paired),
        amount_objective=chosen,
        amount_target="direct" if chosen_target is None else str(chosen_target["kind"]),
        amount_target_note=ratio_plan["note"],
        objective_candidates_calibration_wape={name: m["wape"] for name, m in candidates.items()},
        test_rows_without_ratio_base=(
            int(np.isnan(ratio_denominator(test, ratio_plan["feature"])).sum())
            if ratio_plan["feature"] in test.columns
            else len(test)
        ),
        n_features=len(feature_names),
        best_iteration=int(booster.current_iteration()),
        tuned=bool(tuning),
        population="snapshots of won deals (label_won_amount)",
    )
    document["reasons"] = list(evaluation.reasons)
    log_params = {
        **{f"lgb.{k}": v for k, v in lgb_params.items()},
        "split.label_gap_days": split.label_gap_days,
        "split.train_fraction": params["split"]["train_fraction"],
        "split.calibration_fraction": params["split"]["calibration_fraction"],
        "snapshots.freq": params["snapshots"]["amount"]["freq"],
        "n_features": len(feature_names),
        "best_iteration": int(booster.current_iteration()),
        "tune_trials": tune_trials,
    }
    return TrainResult(
        model="amount",
        bundle=bundle,
        metrics=document,
        test_set=test_set,
        split=split,
        log_params=log_params,
        label_column="label_won_amount",
        prediction_column="prediction",
        group_column="opportunity_id",
        feature_names=feature_names,
        tuning=tuning,
    )


TRAINERS: dict[str, Callable[..., TrainResult]] = {
    "win": train_win_model,
    "amount": train_amount_model,
    "churn": train_churn_model,
}


def train_model(model: str, tables: Mapping[str, pd.DataFrame], **kwargs: Any) -> TrainResult:
    """Dispatch to ``train_win_model`` / ``train_amount_model`` / ``train_churn_model``."""
    if model not in TRAINERS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    return TRAINERS[model](tables, **kwargs)
