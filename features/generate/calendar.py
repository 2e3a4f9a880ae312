"""Vectorised calendar arithmetic on float days since the generator's epoch.

Times inside the simulation are float64 days since `Calendar.epoch` (midnight); fractional parts
are the time of day. Dates are whole days. Only at the output edge are they turned into
datetime64 values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calendar:
    """Month and quarter grids around the simulated history.

    Attributes:
        epoch: Day 0 (first day of the history), as datetime64[D].
        cutoff: First day after the export date: rows with time < cutoff are in the export.
        month_starts: Day numbers of the first day of each grid month (ascending).
        quarter_last_days: Day numbers of the last day of each grid quarter (ascending).
        history_start_month: Index in `month_starts` of the epoch's month.
    """

    epoch: np.datetime64
    cutoff: float
    month_starts: np.ndarray
    quarter_last_days: np.ndarray
    history_start_month: int

    @classmethod
    def build(
        cls, export_date: str, history_years: int, months_before: int = 36, months_after: int = 36
    ) -> Calendar:
        """Calendar whose history starts `history_years` before the month after `export_date`."""
        export = np.datetime64(export_date, "D")
        first_after = (export.astype("datetime64[M]") + 1).astype("datetime64[D]")
        epoch_month = export.astype("datetime64[M]") + 1 - 12 * history_years
        epoch = epoch_month.astype("datetime64[D]")
        months = np.arange(epoch_month - months_before, first_after.astype("datetime64[M]") + months_after)
        month_starts = (months.astype("datetime64[D]") - epoch).astype(np.int64)
        quarter_months = months[(months.astype(np.int64) % 3) == 2]  # Mar, Jun, Sep, Dec
        quarter_last = ((quarter_months + 1).astype("datetime64[D]") - 1 - epoch).astype(np.int64)
        cutoff = float((export - epoch).astype(np.int64) + 1)
        return cls(
            epoch=epoch,
            cutoff=cutoff,
            month_starts=month_starts,
            quarter_last_days=quarter_last,
            history_start_month=int(months_before),
        )

    @property
    def n_months(self) -> int:
        """Number of grid months."""
        return len(self.month_starts)

    def month_index(self, days: np.ndarray) -> np.ndarray:
        """Grid month index of each time (clipped to the grid)."""
        index = np.searchsorted(self.month_starts, np.floor(days), side="right") - 1
        return np.clip(index, 0, self.n_months - 1)

    def month_of_year(self, days: np.ndarray) -> np.ndarray:
        """Calendar month 0..11 of each time."""
        stamps = self.epoch + np.floor(days).astype(np.int64)
        return (stamps.astype("datetime64[M]").astype(np.int64) % 12).astype(np.int64)

    def quarter_last_day(self, days: np.ndarray) -> np.ndarray:
        """Last day (day number) of the quarter containing each time."""
        index = np.searchsorted(self.quarter_last_days, np.floor(days), side="left")
        return self.quarter_last_days[np.clip(index, 0, len(self.quarter_last_days) - 1)]

    def next_quarter_last_day(self, days: np.ndarray) -> np.ndarray:
        """Last day of the first quarter ending strictly after the day of each time."""
        index = np.searchsorted(self.quarter_last_days, np.floor(days), side="right")
        return self.quarter_last_days[np.clip(index, 0, len(self.quarter_last_days) - 1)]

    def month_last_day(self, days: np.ndarray) -> np.ndarray:
        """Last day of the month containing each time."""
        index = self.month_index(days)
        return self.month_starts[np.clip(index + 1, 0, self.n_months - 1)] - 1

    def add_months(self, days: np.ndarray, months: np.ndarray | int) -> np.ndarray:
        """Whole day `months` calendar months after each day (day of month clipped to the month's end)."""
        whole = np.floor(days).astype(np.int64)
        stamps = self.epoch + whole
        month = stamps.astype("datetime64[M]")
        day_of_month = (stamps - month.astype("datetime64[D]")).astype(np.int64)
        target = month + np.asarray(months, dtype=np.int64)
        month_length = ((target + 1).astype("datetime64[D]") - target.astype("datetime64[D]")).astype(
            np.int64
        )
        result = target.astype("datetime64[D]") + np.minimum(day_of_month, month_length - 1)
        return (result - self.epoch).astype(np.int64)

    def months_between(self, start_days: np.ndarray, end_days: np.ndarray) -> np.ndarray:
        """Whole calendar months from each start month to each end month."""
        start = (self.epoch + np.floor(start_days).astype(np.int64)).astype("datetime64[M]")
        end = (self.epoch + np.floor(end_days).astype(np.int64)).astype("datetime64[M]")
        return (end - start).astype(np.int64)

    def to_datetime(self, days: np.ndarray) -> np.ndarray:
        """datetime64[s] of each time (NaN -> NaT), rounded to the second."""
        days = np.asarray(days, dtype=np.float64)
        seconds = np.round(np.where(np.isfinite(days), days, 0.0) * 86_400.0).astype(np.int64)
        result = self.epoch.astype("datetime64[s]") + seconds.astype("timedelta64[s]")
        return np.where(np.isfinite(days), result, np.datetime64("NaT", "s"))

    def to_date(self, days: np.ndarray) -> np.ndarray:
        """datetime64[D] of the day of each time (NaN -> NaT)."""
        days = np.asarray(days, dtype=np.float64)
        whole = np.floor(np.where(np.isfinite(days), days, 0.0)).astype(np.int64)
        result = self.epoch + whole
        return np.where(np.isfinite(days), result, np.datetime64("NaT", "D"))
