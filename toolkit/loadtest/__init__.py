"""Load testing with real locust: what is sent (inputs), the locust processes and the report (runner),
the `compound loadtest` command (cli). Locust itself runs in subprocesses on ``loadtest/locustfile.py``
(packaged as ``toolkit.locust``): importing it here would monkey-patch the caller's process."""
