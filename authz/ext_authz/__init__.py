"""Envoy's ext_authz at the edge: the wire subset (``wire/``), CheckRequest
into EgressRequest (``attributes``), Decision into CheckResponse bytes
(``response``), and the gRPC server with health, reflection and workers
(``server``). Imports core, policy and telemetry.
"""
