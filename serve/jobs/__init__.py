"""Background generation jobs: the store (SQLite, Redis), the runner that claims and runs them, their model."""
