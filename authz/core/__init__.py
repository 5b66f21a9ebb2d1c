"""The decision core: SPIFFE identities, destinations, rules, the compiled
indexes and the engine, as pure functions and immutable values.

Standard library and ``idna`` only (no gRPC, protobuf, YAML, pydantic,
OpenTelemetry or cryptography): it decides, and does no I/O. The import
contracts in ``make test`` keep it so.
"""
