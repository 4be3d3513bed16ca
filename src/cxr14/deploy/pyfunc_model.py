"""The python model of a cxr14 MLflow model, logged as source ("models from code").

`cxr14.deploy.mlflow_model.log_model` logs this file as the model's code: loading the model
(`mlflow.pyfunc.load_model`, `mlflow models serve`) runs it, and `set_model` below hands MLflow
the object, so no cloudpickled class or function is ever read. The object's state is the
package artifact (weights.safetensors + model.json), read as data in `load_context`:

    model = mlflow.pyfunc.load_model("models:/cxr14-cnn/1")
    model.predict(images)                                            # uint8 [N, S, S]
    model.predict(images, params={"operating_point": "sensitivity"})

Everything it does lives in `cxr14.deploy.mlflow_model` (tested there); this file only adapts it
to MLflow's PythonModel interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.models
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from cxr14.deploy.mlflow_model import PACKAGE_ARTIFACT, ModelInputError, Package, load_package, predict_table


class Cxr14Classifier(PythonModel):
    """Scores uint8 grayscale [N, S, S] images with the packaged model (see cxr14.deploy.mlflow_model)."""

    def __init__(self) -> None:
        self.package: Package | None = None

    def load_context(self, context) -> None:
        self.package = load_package(Path(context.artifacts[PACKAGE_ARTIFACT]))

    # np.ndarray: a type hint MLflow 3 takes as is (it derives no second signature from it and
    # does not warn that the hint is missing); the logged signature checks the input.
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.package is None:
            raise ModelInputError("the model's package is not loaded; load it with mlflow.pyfunc.load_model")
        operating_point = (params or {}).get("operating_point")
        return predict_table(self.package, model_input, operating_point)


mlflow.models.set_model(Cxr14Classifier())
