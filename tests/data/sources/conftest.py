"""The real-data fixtures (shared_data, shared_dataset) live in tests/conftest.py."""
