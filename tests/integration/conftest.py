"""The bottle run and bundle fixtures (``bottle_config``, ``bottle_run``, ``bottle_bundle``) live in
``tests/conftest.py``: one session build shared by the integration and the review tests."""
