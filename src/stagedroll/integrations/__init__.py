"""Integrations with the ecosystem: each optional, each imported by its own path.

``openfeature`` (the OpenFeature provider), ``wsgi`` and ``asgi`` (middleware binding the
request's unit), ``flask``, ``django`` and ``celery``.
"""
