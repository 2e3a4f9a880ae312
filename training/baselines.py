"""Baselines every model must beat, as scikit-learn style estimators on the feature frame.

All follow scikit-learn conventions: ``__init__`` stores parameters, ``fit(X, y)`` returns ``self``,
learned state ends in ``_``. Classifiers expose ``predict_proba(X)`` (column 1 = positive class);
regressors expose ``predict(X)``. ``X`` is the feature frame of ``features`` (one row per entity and
as-of date; categorical columns as strings, numeric as float64). Fit them on the *training slice*
only: a rate learned there is the "history as of the training cut-off", so it is as-of correct for
the later test rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

_MISSING = "__missing__"


def _labels(y: Sequence[float]) -> np.ndarray:
    labels = np.asarray(y, dtype=float).ravel()
    if labels.size == 0:
        raise ValueError("cannot fit a baseline on zero rows")
    if np.isnan(labels).any():
        raise ValueError("labels contain NaN")
    return labels


def _two_columns(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 0.0, 1.0)
    return np.column_stack([1.0 - p, p])


def _categorical_columns(frame: pd.DataFrame) -> list[str]:
    return [
        c
        for c in frame.columns
        if frame[c].dtype == object or isinstance(frame[c].dtype, pd.CategoricalDtype | pd.StringDtype)
    ]


def _as_keys(column: pd.Series) -> pd.Series:
    """Values as strings with missing values mapped to one explicit key."""
    text = column.astype(object)
    return text.where(text.notna(), _MISSING).map(str)


class BaseRateBaseline:
    """Predicts the training positive rate for every row (the "no model" reference)."""

    def fit(self, X: pd.DataFrame, y: Sequence[float]) -> BaseRateBaseline:
        """Learn the positive rate."""
        self.rate_ = float(_labels(y).mean())
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Constant probabilities, shape (n, 2)."""
        return _two_columns(np.full(len(X), self.rate_))


class StageRateBaseline:
    """Historical win rate per deal stage (what a stage-probability pipeline in a CRM does).

    Rates are smoothed towards the overall rate: ``(wins + smoothing * base) / (n + smoothing)``;
    an unseen or missing stage gets the missing-stage rate if seen, else the overall rate.

    Args:
        stage_column: Column holding the stage as of the snapshot.
        smoothing: Pseudo-count of the prior (overall rate).
    """

    def __init__(self, stage_column: str = "opp_stage", smoothing: float = 10.0) -> None:
        self.stage_column = stage_column
        self.smoothing = smoothing

    def fit(self, X: pd.DataFrame, y: Sequence[float]) -> StageRateBaseline:
        """Learn smoothed rates per stage."""
        labels = _labels(y)
        if self.stage_column not in X.columns:
            raise ValueError(f"StageRateBaseline: column {self.stage_column!r} not in the feature frame")
        self.base_rate_ = float(labels.mean())
        keys = _as_keys(X[self.stage_column]).to_numpy()
        frame = pd.DataFrame({"key": keys, "y": labels})
        grouped = frame.groupby("key")["y"].agg(["sum", "count"])
        smoothed = (grouped["sum"] + self.smoothing * self.base_rate_) / (grouped["count"] + self.smoothing)
        self.rates_ = {str(k): float(v) for k, v in smoothed.items()}
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Per-row stage rate, shape (n, 2)."""
        fallback = self.rates_.get(_MISSING, self.base_rate_)
        keys = _as_keys(X[self.stage_column])
        return _two_columns(keys.map(lambda k: self.rates_.get(k, fallback)).to_numpy(dtype=float))


class NaiveBayesFrequencyBaseline:
    """Frequency-based naive Bayes over categorical fields (Odoo's predictive lead scoring).

    ``P(won | v1..vk) = P(won) * prod P(vi | won) / (P(won) * prod P(vi | won) + P(lost) * prod P(vi | lost))``
    with Laplace smoothing ``P(v | c) = (count(v, c) + alpha) / (n_c + alpha * (K + 1))`` where ``K`` is
    the number of distinct training values of the field (the +1 reserves mass for unseen values);
    missing is its own value. Computed in log space.

    Args:
        columns: Categorical fields to use (default: every object/categorical column of ``X``).
        alpha: Laplace pseudo-count.
    """

    def __init__(self, columns: Sequence[str] | None = None, alpha: float = 1.0) -> None:
        self.columns = columns
        self.alpha = alpha

    def fit(self, X: pd.DataFrame, y: Sequence[float]) -> NaiveBayesFrequencyBaseline:
        """Count values per class and field."""
        labels = _labels(y)
        columns = list(self.columns) if self.columns is not None else _categorical_columns(X)
        missing = [c for c in columns if c not in X.columns]
        if missing:
            raise ValueError(f"NaiveBayesFrequencyBaseline: columns not in the feature frame: {missing}")
        self.columns_ = columns
        n_pos = float(labels.sum())
        n_neg = float(labels.size - n_pos)
        # Smoothed class prior so that one-class training data still gives finite log-odds.
        self.log_prior_odds_ = float(np.log((n_pos + self.alpha) / (n_neg + self.alpha)))
        self.log_likelihood_ratio_: dict[str, dict[str, float]] = {}
        self.unseen_log_ratio_: dict[str, float] = {}
        for column in columns:
            keys = _as_keys(X[column]).to_numpy()
            table = pd.crosstab(keys, labels)
            pos_counts = table[1.0] if 1.0 in table.columns else pd.Series(0.0, index=table.index)
            neg_counts = table[0.0] if 0.0 in table.columns else pd.Series(0.0, index=table.index)
            n_values = len(table.index) + 1
            pos_denominator = n_pos + self.alpha * n_values
            neg_denominator = n_neg + self.alpha * n_values
            ratio = np.log((pos_counts + self.alpha) / pos_denominator) - np.log(
                (neg_counts + self.alpha) / neg_denominator
            )
            self.log_likelihood_ratio_[column] = {str(k): float(v) for k, v in ratio.items()}
            self.unseen_log_ratio_[column] = float(
                np.log(self.alpha / pos_denominator) - np.log(self.alpha / neg_denominator)
            )
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Naive-Bayes posterior, shape (n, 2)."""
        log_odds = np.full(len(X), self.log_prior_odds_)
        for column in self.columns_:
            ratios = self.log_likelihood_ratio_[column]
            unseen = self.unseen_log_ratio_[column]
            keys = _as_keys(X[column])
            log_odds = log_odds + keys.map(lambda k, r=ratios, u=unseen: r.get(k, u)).to_numpy(dtype=float)
        return _two_columns(1.0 / (1.0 + np.exp(-log_odds)))


class LogisticRegressionBaseline:
    """L2 logistic regression: one-hot categoricals + standardised numerics with median imputation.

    Numeric columns get missing-value indicator columns; infinite values count as missing; columns
    entirely missing in training are dropped. ``C`` is **fixed** (default 1.0) rather than tuned: the
    baseline must be cheap and not benefit from test-period information; with standardised inputs
    and thousands of rows the result is insensitive to C in [0.1, 10].

    Args:
        C: Inverse L2 regularisation strength.
        categorical_columns: Columns to one-hot (default: object/categorical columns of ``X``).
        min_category_frequency: Rarer categories are merged into one infrequent bucket.
        max_iter: Solver iterations.
    """

    def __init__(
        self,
        C: float = 1.0,
        categorical_columns: Sequence[str] | None = None,
        min_category_frequency: int = 5,
        max_iter: int = 2000,
    ) -> None:
        self.C = C
        self.categorical_columns = categorical_columns
        self.min_category_frequency = min_category_frequency
        self.max_iter = max_iter

    def _frame(self, X: pd.DataFrame) -> pd.DataFrame:
        frame = pd.DataFrame(index=X.index)
        for column in self.categorical_columns_:
            frame[column] = _as_keys(X[column])
        for column in self.numeric_columns_:
            frame[column] = (
                pd.to_numeric(X[column], errors="coerce").astype(float).replace([np.inf, -np.inf], np.nan)
            )
        return frame

    def fit(self, X: pd.DataFrame, y: Sequence[float]) -> LogisticRegressionBaseline:
        """Fit the preprocessing and the regression."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        labels = _labels(y)
        categorical = (
            list(self.categorical_columns)
            if self.categorical_columns is not None
            else _categorical_columns(X)
        )
        self.categorical_columns_ = categorical
        self.numeric_columns_ = [
            c
            for c in X.columns
            if c not in categorical and pd.to_numeric(X[c], errors="coerce").notna().any()
        ]
        if np.unique(labels).size < 2:
            # One class only: fall back to its rate instead of failing.
            self.constant_ = float(labels.mean())
            return self
        self.constant_ = None
        transformers = []
        if categorical:
            transformers.append(
                (
                    "categorical",
                    OneHotEncoder(
                        handle_unknown="infrequent_if_exist", min_frequency=self.min_category_frequency
                    ),
                    categorical,
                )
            )
        if self.numeric_columns_:
            transformers.append(
                (
                    "numeric",
                    Pipeline(
                        [
                            ("impute", SimpleImputer(strategy="median", add_indicator=True)),
                            ("scale", StandardScaler()),
                        ]
                    ),
                    self.numeric_columns_,
                )
            )
        self.pipeline_ = Pipeline(
            [
                ("prepare", ColumnTransformer(transformers)),
                ("model", LogisticRegression(C=self.C, max_iter=self.max_iter)),
            ]
        )
        self.pipeline_.fit(self._frame(X), labels.astype(int))
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities, shape (n, 2)."""
        if self.constant_ is not None:
            return _two_columns(np.full(len(X), self.constant_))
        return self.pipeline_.predict_proba(self._frame(X))


class RuleOfThumbChurnBaseline:
    """The rule a customer-success team uses: usage going down and unhappy NPS mean risk.

    Each account gets 0, 1 or 2 flags: ``usage_trend < usage_decline_threshold`` and
    ``nps < nps_threshold`` (missing values raise no flag; an absent column raises none and is
    listed in ``missing_columns_``). The probability per flag count is the smoothed training churn
    rate of accounts with that count, so the rule ranks like a CS team and is calibrated.

    Args:
        usage_trend_column: Relative usage trend (e.g. recent vs previous window, -0.3 = 30 % down).
        nps_column: Latest NPS answer (0-10).
        usage_decline_threshold: A trend below this raises the usage flag.
        nps_threshold: A score below this raises the NPS flag (detractors are 0-6).
        smoothing: Pseudo-count towards the overall rate.
    """

    def __init__(
        self,
        usage_trend_column: str = "acct_usage_active_users_trend_90d",
        nps_column: str = "acct_nps_latest",
        usage_decline_threshold: float = -0.2,
        nps_threshold: float = 7.0,
        smoothing: float = 10.0,
    ) -> None:
        self.usage_trend_column = usage_trend_column
        self.nps_column = nps_column
        self.usage_decline_threshold = usage_decline_threshold
        self.nps_threshold = nps_threshold
        self.smoothing = smoothing

    def flags(self, X: pd.DataFrame) -> np.ndarray:
        """Number of raised flags per row (0, 1 or 2)."""
        count = np.zeros(len(X), dtype=int)
        if self.usage_trend_column in X.columns:
            trend = pd.to_numeric(X[self.usage_trend_column], errors="coerce").to_numpy(dtype=float)
            count += np.nan_to_num(trend, nan=np.inf) < self.usage_decline_threshold
        if self.nps_column in X.columns:
            nps = pd.to_numeric(X[self.nps_column], errors="coerce").to_numpy(dtype=float)
            count += np.nan_to_num(nps, nan=np.inf) < self.nps_threshold
        return count

    def fit(self, X: pd.DataFrame, y: Sequence[float]) -> RuleOfThumbChurnBaseline:
        """Learn the smoothed churn rate per flag count."""
        labels = _labels(y)
        self.missing_columns_ = [c for c in (self.usage_trend_column, self.nps_column) if c not in X.columns]
        self.base_rate_ = float(labels.mean())
        counts = self.flags(X)
        self.rates_ = {}
        for n_flags in (0, 1, 2):
            selected = labels[counts == n_flags]
            self.rates_[n_flags] = float(
                (selected.sum() + self.smoothing * self.base_rate_) / (selected.size + self.smoothing)
            )
        return self

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities by flag count, shape (n, 2)."""
        counts = self.flags(X)
        return _two_columns(np.array([self.rates_[int(c)] for c in counts], dtype=float))


class AsOfAmountBaseline:
    """Deal revenue = the deal's amount as of the snapshot (what the CRM pipeline report shows).

    Rows without an as-of amount get the median training label.

    Args:
        amount_column: Column holding the as-of expected amount.
    """

    def __init__(self, amount_column: str = "opp_amount") -> None:
        self.amount_column = amount_column

    def fit(self, X: pd.DataFrame, y: Sequence[float]) -> AsOfAmountBaseline:
        """Learn the fallback (median label)."""
        self.fallback_ = float(np.median(_labels(y)))
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """As-of amount, or the fallback where missing."""
        if self.amount_column not in X.columns:
            raise ValueError(f"AsOfAmountBaseline: column {self.amount_column!r} not in the feature frame")
        amounts = pd.to_numeric(X[self.amount_column], errors="coerce").to_numpy(dtype=float)
        return np.where(np.isfinite(amounts), amounts, self.fallback_)


class ListPriceBaseline:
    """Deal revenue = the product's list price.

    Prices come from a ``products`` table when one is given, otherwise from the median won amount
    per product among the training rows. Unknown products get the median training label.

    Args:
        product_column: Column of ``X`` holding the product.
        products: Optional table with one row per product.
        products_key_column: Product name column of ``products``.
        price_column: List price column of ``products``.
    """

    def __init__(
        self,
        product_column: str = "opp_product",
        products: pd.DataFrame | None = None,
        products_key_column: str = "product",
        price_column: str = "list_price",
    ) -> None:
        self.product_column = product_column
        self.products = products
        self.products_key_column = products_key_column
        self.price_column = price_column

    def fit(self, X: pd.DataFrame, y: Sequence[float]) -> ListPriceBaseline:
        """Learn prices per product (table or training medians) and the fallback."""
        labels = _labels(y)
        self.fallback_ = float(np.median(labels))
        if self.products is not None:
            for column in (self.products_key_column, self.price_column):
                if column not in self.products.columns:
                    raise ValueError(f"ListPriceBaseline: products table lacks column {column!r}")
            prices = pd.to_numeric(self.products[self.price_column], errors="coerce")
            keys = _as_keys(self.products[self.products_key_column])
            self.prices_ = {k: float(v) for k, v in zip(keys, prices, strict=True) if np.isfinite(v)}
            self.source_ = "products_table"
        else:
            if self.product_column not in X.columns:
                raise ValueError(
                    f"ListPriceBaseline: column {self.product_column!r} not in the feature frame"
                )
            frame = pd.DataFrame({"key": _as_keys(X[self.product_column]).to_numpy(), "y": labels})
            self.prices_ = {str(k): float(v) for k, v in frame.groupby("key")["y"].median().items()}
            self.source_ = "training_median"
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Price of each row's product."""
        keys = _as_keys(X[self.product_column])
        return keys.map(lambda k: self.prices_.get(k, self.fallback_)).to_numpy(dtype=float)
