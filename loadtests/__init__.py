"""Locust users and load scenarios for Easel (run them with `easel loadtest SCENARIO`)."""
