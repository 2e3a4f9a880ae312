"""MLflow models-from-code definition of a revcast bundle (nothing is pickled).

``training.tracking.log_bundle_model`` passes the *path of this file* as ``python_model`` and the
bundle directory as ``artifacts={"bundle": ...}``; MLflow stores this source file and re-executes it
when the model is loaded (``mlflow.pyfunc.load_model`` / ``mlflow models serve``). The revcast
service itself does not use this: it loads the bundle directly (``serving.registry.resolve_bundle``).

Executing this file registers the model with ``mlflow.models.set_model`` -- that is how
models-from-code works; the module is never imported by revcast code.
"""

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from serving.bundle import ModelBundle


class RevcastBundleModel(PythonModel):
    """Predicts with the ``ModelBundle`` stored under the ``bundle`` artifact."""

    def load_context(self, context) -> None:
        """Load and hash-check the bundle."""
        self.bundle = ModelBundle.load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        """Calibrated probability (classifier) or value (regressor) per input row.

        The ``pd.DataFrame`` hint tells MLflow not to derive a schema from type hints (the logged
        signature, inferred from real feature rows, is used instead).
        """
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return self.bundle.predict(frame)


mlflow.models.set_model(RevcastBundleModel())
