"""mlflow ui / mlflow server with light settings, and the store side of serving."""
