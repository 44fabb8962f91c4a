"""MLflow: runs, the metric writer, registration and the registered pyfunc (layer 3: the library never imports it)."""
