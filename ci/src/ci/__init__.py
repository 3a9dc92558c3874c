"""The telemetry CI/CD pipeline on Dagger (dagger-io client API).

Run inside a Dagger session from the repository root::

    dagger run uv run ci tests        # or, with the workspace venv active: dagger run ci tests

Commands: ``lint``, ``tests`` (or ``test``: the suite against a ``postgres:18`` service container),
``build`` (the four service images from the one parameterised Dockerfile), ``deploy`` (kind +
``helm upgrade --install``) and ``all``.
Every step builds a lazy ``Container``/``Directory``/``Service``; only the leaf steps in
``ci.__main__`` await, and independent leaves run concurrently in one anyio task group.
"""
