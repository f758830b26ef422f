"""Prefect @task wrappers: a few typed lines each, every one calling the library."""
