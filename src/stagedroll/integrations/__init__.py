"""Integrations with the ecosystem: each optional, each imported by its own path.

``wsgi`` and ``asgi`` (middleware binding the request's unit), ``flask``, ``django`` and
``celery``.
"""
