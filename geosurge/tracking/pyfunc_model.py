"""MLflow models-from-code entry: MLflow runs this file to build the model, so nothing is pickled.

See `geosurge.tracking.pyfunc.GeoSurgePyfunc`; the geosurge package travels with the model (`code_paths`).
"""

import mlflow

from geosurge.tracking.pyfunc import GeoSurgePyfunc

mlflow.models.set_model(GeoSurgePyfunc())
