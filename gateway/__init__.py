"""The logbroker gateway: HTTP API and SSE streams over Redis (docs/design.md §5-§8).

Sub-packages, imports running one way (``cli`` -> ``api`` -> ``live`` -> the modules here):

* ``gateway.api``: the HTTP handlers and ``create_app``;
* ``gateway.live``: the fan-out engine of docs/design.md §6 (hub, readers, rings, subscribers);
* ``gateway.cli``: the ``logbroker`` command (serve, demo, tail, token, the embedded redis-server).

What all three share lives here: settings, Redis clients, typed stream reads, errors, metrics,
stream ids, entry JSON. Everything here needs the gateway extra (``pip install
'logbroker[gateway]'``); ``broker`` alone is what a worker needs.
"""
