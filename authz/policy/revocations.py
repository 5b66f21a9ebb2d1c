"""Editing an EgressRevocation file in one step, as an incident responder
does: add an entry, lift one, list them.

Edits keep the file's comments and order (ruamel.yaml's round-trip mode),
are validated by the same loader the server uses before they replace the
file, and replace it atomically (a watcher never sees half a file).
"""

from __future__ import annotations

import datetime
import io
import os
import tempfile
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from authz.policy.errors import PolicyError, Problem, format_field
from authz.policy.load import load_paths
from authz.policy.model import API_VERSION, RevokedIdentity

__all__ = ["RevocationEdit", "add_revocation", "lift_revocation", "list_revocations"]

_KIND = "EgressRevocation"
_HEADER = """\
# Revoked and contained identities (EgressRevocation), applied by authz at its
# next reload, in every mode. Edit with `authz revoke`: --identity to add,
# --lift to remove, --list to show.
"""


@dataclass(frozen=True, slots=True)
class RevocationEdit:
    """One entry as the command line gives it; ``allow_only`` as (host, port) pairs."""

    identity: str
    reason: str
    by: str
    ticket: str | None = None
    at: datetime.datetime | None = None  # default: now
    allow_only: Sequence[tuple[str, int]] = ()

    def as_mapping(self) -> dict[str, Any]:
        at = self.at or datetime.datetime.now(datetime.UTC)
        entry: dict[str, Any] = {"identity": self.identity, "reason": self.reason, "by": self.by}
        if self.ticket:
            entry["ticket"] = self.ticket
        entry["at"] = at.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        if self.allow_only:
            entry["allow_only"] = [{"hosts": [host], "ports": [port]} for host, port in self.allow_only]
        return entry


def _yaml() -> Any:
    from ruamel.yaml import YAML  # only the revoke command edits YAML in place

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 120
    return yaml


def _documents(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [
        document for document in _yaml().load_all(path.read_text(encoding="utf-8")) if document is not None
    ]


def _revocation_document(documents: list[Any], path: Path, *, create: bool) -> Any:
    for document in documents:
        if isinstance(document, MutableMapping) and document.get("kind") == _KIND:
            spec = document.setdefault("spec", {})
            if spec.get("revoked") is None:
                spec["revoked"] = []
            return document
    if not create:
        raise PolicyError([Problem(str(path), 0, f"no {_KIND} document in the file")])
    from ruamel.yaml.comments import CommentedMap

    name = "".join(c if c.isalnum() else "-" for c in path.stem.lower()).strip("-")[:63] or "revocations"
    document = CommentedMap(
        [
            ("apiVersion", API_VERSION),
            ("kind", _KIND),
            ("metadata", {"name": name}),
            ("spec", {"revoked": []}),
        ]
    )
    if not documents:
        document.yaml_set_start_comment(_HEADER)
    documents.append(document)
    return document


def _flow_destinations(entry: dict[str, Any]) -> dict[str, Any]:
    """``allow_only`` items as ``{hosts: [...], ports: [...]}``, as people write them."""
    from ruamel.yaml.comments import CommentedMap

    if "allow_only" in entry:
        flow = []
        for destination in entry["allow_only"]:
            item = CommentedMap(destination)
            item.fa.set_flow_style()
            flow.append(item)
        entry = {**entry, "allow_only": flow}
    return entry


def _write_checked(path: Path, documents: list[Any]) -> None:
    """Dump, validate with the server's own loader, then replace atomically."""
    text = io.StringIO()
    _yaml().dump_all(documents, text)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text.getvalue())
        load_paths([temporary])  # PolicyError: nothing is replaced
        if path.exists():
            os.chmod(temporary, path.stat().st_mode & 0o7777)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def add_revocation(path: Path, edit: RevocationEdit) -> dict[str, Any]:
    """Append ``edit`` to the file's EgressRevocation (creating both if
    needed); raise PolicyError when the identity is already revoked or the
    entry is invalid. The entry as written."""
    documents = _documents(path)
    document = _revocation_document(documents, path, create=True)
    revoked = document["spec"]["revoked"]
    if any(entry.get("identity") == edit.identity for entry in revoked):
        raise PolicyError(
            [Problem(str(path), 0, f"{edit.identity} is already revoked: --lift it first to change it")]
        )
    entry = edit.as_mapping()
    try:
        RevokedIdentity.model_validate(entry)  # a clear error before any YAML is touched
    except ValidationError as exc:
        raise PolicyError(
            [
                Problem(str(path), 0, error["msg"].removeprefix("Value error, "), format_field(error["loc"]))
                for error in exc.errors()
            ]
        ) from None
    revoked.append(_flow_destinations(entry))
    _write_checked(path, documents)
    return entry


def lift_revocation(path: Path, identity: str) -> dict[str, Any]:
    """Remove the entry of ``identity``; raise PolicyError when there is none. The entry removed."""
    documents = _documents(path)
    document = _revocation_document(documents, path, create=False)
    revoked = document["spec"]["revoked"]
    for index, entry in enumerate(revoked):
        if entry.get("identity") == identity:
            del revoked[index]
            _write_checked(path, documents)
            return dict(entry)
    raise PolicyError([Problem(str(path), 0, f"{identity} is not revoked in this file")])


def list_revocations(path: Path) -> list[RevokedIdentity]:
    """The entries, as the server reads them (an absent file has none)."""
    if not path.exists():
        return []
    return [entry for loaded in load_paths([path]).revocations for entry in loaded.model.spec.revoked]
