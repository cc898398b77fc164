"""``tally serve``: a long-lived coordinator with an HTTP API, a durable journal and a live
dashboard, and the clients that talk to it.

- :mod:`.bodies`: the API's request shapes, validated, and the job states
- :mod:`.store`: the SQLite journal (jobs, committed partials, the attempt-id reservation)
- :mod:`.jobs`: the service itself: submissions, the journal hooks, job and worker views
- :mod:`.live`: what the dashboard and the metrics show, kept from the event records
- :mod:`.metrics`: the Prometheus registry
- :mod:`.api`: the Starlette app (routes, token middleware, server-sent events)
- :mod:`.serve`: ``tally serve`` (uvicorn in the coordinator's event loop, SIGTERM drains)
- :mod:`.client`: :class:`Client`, and :mod:`.commands`: ``tally submit|jobs|job|cancel``
"""
