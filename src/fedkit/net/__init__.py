"""Deployment: a coordinator and real workers talking gRPC.

Layers, bottom up: :mod:`~fedkit.net.codec` (safetensors payloads in SHA-256-checked chunks),
:mod:`~fedkit.net.errors` (typed refusals), :mod:`~fedkit.net.tls` (certificates, mutual TLS),
:mod:`~fedkit.net.retry` (bounded backoff with jitter), :mod:`~fedkit.net.transport` (servers and
channels with the security policy), :mod:`~fedkit.net.broker` and :mod:`~fedkit.net.service` (the
coordinator's task board behind the gRPC servicer), :mod:`~fedkit.net.client` (the worker's
connection). See docs/deploy.md.
"""
