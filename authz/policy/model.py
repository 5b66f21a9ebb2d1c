"""The policy file schema (``apiVersion: egress-authz/v1``).

Values are parsed while they are validated (hosts into HostPatterns, ports
into ranges), so a bad one is reported at its own line and compile never
meets it.
"""

from __future__ import annotations

import datetime
import re
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from authz.core.decision import Mode, Reason, Verdict
from authz.core.destination import HostPattern, InvalidHost, parse_host_pattern
from authz.core.identity import IdentityPattern, InvalidSpiffeId, parse_identity_pattern
from authz.core.rule import PathPattern, parse_path_pattern, parse_port_range

__all__ = [
    "API_VERSION",
    "Destination",
    "EgressException",
    "EgressPolicy",
    "EgressRevocation",
    "EgressPolicyTest",
    "EgressRule",
    "Expectation",
    "HttpMatch",
    "LintSilence",
    "Metadata",
    "PolicySpec",
    "RateLimit",
    "RevocationSpec",
    "RevokedIdentity",
    "TestCase",
    "TestDestination",
    "TestHttp",
    "TestSpec",
]

API_VERSION = "egress-authz/v1"
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_METHOD = re.compile(r"[A-Z]+")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


E = TypeVar("E", bound=StrEnum)


def _enum(kind: type[E], value: Any) -> E:
    try:
        return kind(_text(value))
    except ValueError:
        raise ValueError(f"must be one of {', '.join(member.value for member in kind)}") from None


def _host(value: Any) -> HostPattern:
    try:
        return parse_host_pattern(_text(value))
    except InvalidHost as exc:
        raise ValueError(f"bad host {value!r}: {exc}") from None


def _identity(value: Any) -> IdentityPattern:
    try:
        return parse_identity_pattern(_text(value))
    except InvalidSpiffeId as exc:
        raise ValueError(f"bad SPIFFE ID {value!r}: {exc}") from None


def _ports(value: Any) -> tuple[int, int]:
    return parse_port_range(value)


def _path(value: Any) -> PathPattern:
    return parse_path_pattern(_text(value))


def _name(value: Any) -> str:
    text = _text(value)
    if _NAME.fullmatch(text) is None:
        raise ValueError(f"{text!r} must be lower-case letters, digits and inner '-', 63 at most")
    return text


def _timestamp(value: Any) -> datetime.datetime:
    """RFC 3339 with an offset (``2026-12-01T00:00:00Z``, ``...+01:00``): a
    time without one means different instants in different places."""
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an RFC 3339 time (2026-12-01T00:00:00Z)") from None
    if not isinstance(value, datetime.datetime):
        raise ValueError(f"expected an RFC 3339 time with an offset (2026-12-01T00:00:00Z), got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value.isoformat()} has no offset: write it as ...Z or ...+01:00")
    return value


def _port_text(ports: tuple[int, int]) -> int | str:
    low, high = ports
    return low if low == high else f"{low}-{high}"


def _string_schema(validator: Any) -> Any:
    """Parsed on the way in; written back as people write it (``model_dump``)."""
    return (
        PlainValidator(validator),
        PlainSerializer(str, return_type=str),
        WithJsonSchema({"type": "string"}),
    )


HostField = Annotated[HostPattern, *_string_schema(_host)]
IdentityField = Annotated[IdentityPattern, *_string_schema(_identity)]
PortField = Annotated[
    tuple[int, int],
    PlainValidator(_ports),
    PlainSerializer(_port_text),
    WithJsonSchema({"type": ["integer", "string"]}),
]
PathField = Annotated[PathPattern, *_string_schema(_path)]
Name = Annotated[str, *_string_schema(_name)]
Timestamp = Annotated[
    datetime.datetime,
    PlainValidator(_timestamp),
    PlainSerializer(lambda value: value.isoformat().replace("+00:00", "Z"), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
Text = Annotated[str, Field(min_length=1, max_length=1024)]
_LINT_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


def _lint_code(value: Any) -> str:
    text = _text(value)
    if _LINT_CODE.fullmatch(text) is None:
        raise ValueError(f"{text!r} is not a lint code: they are UPPER_SNAKE, e.g. WILDCARD_DESTINATION")
    return text


LintCode = Annotated[str, PlainValidator(_lint_code), WithJsonSchema({"type": "string"})]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True)


class LintSilence(_Model):
    """``lint: {ignore: [CODE...], reason: "..."}``: review warnings someone
    looked at and accepted, with the reason on record. The codes are checked
    by ``authz check`` only (a code a newer release knows must not make a
    server reject its policy); the reason is required here."""

    ignore: Annotated[list[LintCode], Field(min_length=1)]
    reason: Text

    @field_validator("reason")
    @classmethod
    def _stated(cls, reason: str) -> str:
        if not reason.strip():
            raise ValueError("a silence needs a stated reason, not a blank")
        return reason


class Metadata(_Model):
    name: Name
    owner: Text
    change_ref: Text | None = None
    description: Text | None = None
    since: Timestamp | None = None  # when the policy entered its current mode: the start of a dry run
    lint: LintSilence | None = None  # silences for the whole policy, its rules and exceptions


class HttpMatch(_Model):
    methods: Annotated[list[str], Field(min_length=1)] | None = None
    paths: Annotated[list[PathField], Field(min_length=1)] | None = None

    @field_validator("methods")
    @classmethod
    def _upper_methods(cls, methods: list[str] | None) -> list[str] | None:
        if methods is None:
            return None
        upper = [m.upper() for m in methods]
        for method in upper:
            if _METHOD.fullmatch(method) is None:
                raise ValueError(f"method {method!r} is not an HTTP method token")
        return upper

    @model_validator(mode="after")
    def _not_empty(self) -> HttpMatch:
        if self.methods is None and self.paths is None:
            raise ValueError("http needs methods, paths or both (leave it out to allow any request)")
        return self


RATE_UNITS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


class RateLimit(_Model):
    """At most ``requests`` per ``per``, for each identity on a rule: enforced
    by Envoy (local per gateway, or global through a rate limit service),
    never in authz's memory."""

    requests: Annotated[int, Field(ge=1, le=10**9)]
    per: Literal["second", "minute", "hour", "day"]

    @property
    def seconds(self) -> int:
        return RATE_UNITS[self.per]


class EgressRule(_Model):
    id: Name
    hosts: Annotated[list[HostField], Field(min_length=1)]
    ports: Annotated[list[PortField], Field(min_length=1)]
    http: HttpMatch | None = None
    purpose: Text | None = None
    rate_limit: RateLimit | None = None
    lint: LintSilence | None = None


class EgressException(_Model):
    """A break-glass grant: like a rule, with an owner, a reason, a ticket
    and an expiry that closes it by itself."""

    id: Name
    hosts: Annotated[list[HostField], Field(min_length=1)]
    ports: Annotated[list[PortField], Field(min_length=1)]
    http: HttpMatch | None = None
    owner: Text
    reason: Text
    ticket: Text
    expires: Timestamp
    lint: LintSilence | None = None


class PolicySpec(_Model):
    identities: Annotated[list[IdentityField], Field(min_length=1)]
    zones: Annotated[list[Name], Field(min_length=1)] | None = None
    mode: Mode = Mode.ENFORCE
    allow_sni_host_mismatch: bool = False  # for clients that legitimately send another SNI than Host
    egress: list[EgressRule]
    exceptions: list[EgressException] = Field(default_factory=list)
    rate_limit: RateLimit | None = None  # the default for rules without their own

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Mode:
        return _enum(Mode, value)


class EgressPolicy(_Model):
    apiVersion: Literal["egress-authz/v1"]
    kind: Literal["EgressPolicy"]
    metadata: Metadata
    spec: PolicySpec


class Destination(_Model):
    hosts: Annotated[list[HostField], Field(min_length=1)]
    ports: Annotated[list[PortField], Field(min_length=1)]


class RevokedIdentity(_Model):
    """An identity (or a ``/*`` prefix: a namespace in quarantine) denied
    everything, or with ``allow_only``, everything but those destinations."""

    identity: IdentityField
    reason: Text
    by: Text
    ticket: Text | None = None
    at: Timestamp
    allow_only: Annotated[list[Destination], Field(min_length=1)] | None = None


class RevocationSpec(_Model):
    revoked: list[RevokedIdentity] = Field(default_factory=list)


class RevocationMetadata(_Model):
    name: Name
    description: Text | None = None


class EgressRevocation(_Model):
    apiVersion: Literal["egress-authz/v1"]
    kind: Literal["EgressRevocation"]
    metadata: RevocationMetadata
    spec: RevocationSpec


class TestDestination(_Model):
    host: Text | None = None
    port: int | None = None
    sni: Text | None = None
    scheme: Text | None = None


class TestHttp(_Model):
    method: Text
    path: Text | None = None


class Expectation(_Model):
    verdict: Verdict
    reason: Reason | None = None
    policy: str | None = None
    rule: str | None = None

    @field_validator("verdict", mode="before")
    @classmethod
    def _verdict(cls, value: Any) -> Verdict:
        return _enum(Verdict, value)

    @field_validator("reason", mode="before")
    @classmethod
    def _reason(cls, value: Any) -> Reason | None:
        return None if value is None else _enum(Reason, value)


class TestCase(_Model):
    name: Text
    identity: str | None
    destination: TestDestination
    http: TestHttp | None = None
    zone: str | None = None
    at: Timestamp | None = None  # the instant to evaluate at (exception expiry); default now
    expect: Expectation


class TestSpec(_Model):
    cases: Annotated[list[TestCase], Field(min_length=1)]


class EgressPolicyTest(_Model):
    apiVersion: Literal["egress-authz/v1"]
    kind: Literal["EgressPolicyTest"]
    metadata: Annotated[dict[str, str], Field(min_length=1)]
    spec: TestSpec
