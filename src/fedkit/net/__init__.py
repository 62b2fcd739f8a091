"""Deployment: a coordinator and real workers talking gRPC.

Layers, bottom up:

* wire: :mod:`~fedkit.net.codec` (safetensors payloads in SHA-256-checked chunks, caps before
  buffering), :mod:`~fedkit.net.payload` (typed payload trees on a receiver-built template),
  :mod:`~fedkit.net.errors` (typed refusals), ``proto/`` (the generated gRPC schema);
* transport: :mod:`~fedkit.net.tls` (certificates, mutual TLS), :mod:`~fedkit.net.transport`
  (servers and channels with the security policy and message limits), :mod:`~fedkit.net.retry`
  (bounded backoff with jitter, TLS fail-fast);
* coordinator: :mod:`~fedkit.net.broker` and :mod:`~fedkit.net.service` (task board behind the
  servicer), :mod:`~fedkit.net.executor` (the remote executor: round policy, ordered aggregation),
  :mod:`~fedkit.net.straggler`, :mod:`~fedkit.net.state` (SQLite commits, the deployment's
  round checkpoint), :mod:`~fedkit.net.results` (the run summary and the recorder protocol),
  :mod:`~fedkit.net.coordinator`;
* worker: :mod:`~fedkit.net.client` (its connection), :mod:`~fedkit.net.worker` (the loop);
* what both run: :mod:`~fedkit.net.deployment` (a typed, already-built deployment and its
  ``[deploy]`` round policy).

This package imports neither :mod:`fedkit.sim` nor :mod:`fedkit.experiment`: experiment files,
the results database and the ``fedkit coordinator|worker|launch|certs`` commands are the edge's
(:mod:`fedkit.experiment.deploy`, :mod:`fedkit.experiment.deploy_results`,
:mod:`fedkit.experiment.deploy_cli`).

See docs/deploy.md.
"""
