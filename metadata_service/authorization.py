"""Who may call which metadata RPC: the token lookup and the rule table, checked before a servicer runs.

Every RPC of the service's packages has a rule (a test derives the RPCs from the proto
descriptors and fails on one without). A rule names the role the call needs and the
request fields whose references decide *where* it is needed: a writer of "acme/vision"
may push to "acme/vision/resnet" but not to "acme/nlp/bert". Checks that need the
database (the project of a pending version, whether an alias is protected) are made by
the domain with the caller's principal.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from mreg.metadata_service.catalog.tokens import Tokens, TokenView
from mreg.metadata_service.errors import RegistryError
from mreg.metadata_service.models import utcnow
from mreg.metadata_service.references import Defaults, parse_project, parse_reference
from mreg.metadata_service.servicer import ENTITY_HEADER, PROJECT_HEADER
from mreg.server_runtime.principals import (
    SERVICE,
    ExpiringCache,
    Principal,
    Role,
    Unauthenticated,
    denied,
    same_secret,
)

# How long a token lookup is reused. Both services cache for at most this long, so a
# revocation takes effect everywhere within twice this (the blob service asks this one).
DEFAULT_CACHE_SECONDS = 30.0


@dataclass(frozen=True)
class Rule:
    """The role a call needs: over the projects ``fields`` name (or anywhere), and READER over ``reads``."""

    role: Role
    fields: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    # Field paths holding a project ("entity/project") rather than a reference.
    projects: tuple[str, ...] = ()


R, W, M, A = Role.READER, Role.WRITER, Role.MAINTAINER, Role.ADMIN

RULES: dict[str, Rule] = {
    # mreg.metadata.v1.MetadataService
    "CreateVersion": Rule(W, ("parent",)),
    # A pending version's project is checked by the domain (the request names only its uid).
    "CommitVersion": Rule(W, ("new_version.parent", "links.registered_model")),
    "GetVersion": Rule(R, ("name",)),
    "ResolveReference": Rule(R, ("name",)),
    "UpdateVersion": Rule(W, ("name",)),
    "ListVersions": Rule(R, ("parent",)),
    "ListVersionFiles": Rule(R, ("name",)),
    # The projects a caller may not read are left out of the page by the domain.
    "ListProjects": Rule(R),
    "GetArtifact": Rule(R, ("name",)),
    "ListArtifacts": Rule(R, projects=("parent",)),
    "CreateRegisteredModel": Rule(W, ("name",)),
    "UpdateRegisteredModel": Rule(M, ("name",)),
    "GetRegisteredModel": Rule(R, ("name",)),
    "ListRegisteredModels": Rule(R, projects=("parent",)),
    "CreateLink": Rule(W, ("parent",), reads=("version",)),
    "ListLinks": Rule(R, ("parent",)),
    # Protected aliases need MAINTAINER; the domain knows which are.
    "SetAlias": Rule(W, ("name",)),
    "DeleteAlias": Rule(W, ("parent",)),
    "DeleteVersion": Rule(M, ("name",)),
    "DeleteLink": Rule(M, ("name",)),
    "DeleteCollection": Rule(M, ("name",)),
    "SetRetentionPolicy": Rule(M, ("name",)),
    "SetAliasProtection": Rule(M, ("parent",)),
    "ListAliasHistory": Rule(R, ("parent",)),
    "RecordRunInputs": Rule(W, ("name",), reads=("versions",)),
    "GetLineage": Rule(R, ("version", "run")),
    # Events are filtered to the caller's scope as they stream.
    "Watch": Rule(R),
    "CollectGarbage": Rule(A),
    # mreg.metadata.v1.TokenService
    "CreateToken": Rule(A),
    "ListTokens": Rule(A),
    "RevokeToken": Rule(A),
    "IntrospectToken": Rule(A),  # and the services' own identity, which is allowed everything
    "GetCaller": Rule(R),
}


def _values(message: Any, path: str) -> Iterator[str]:
    """The non-empty strings at a field path such as "links.registered_model", through repeated fields."""
    head, _, rest = path.partition(".")
    descriptor = getattr(message, "DESCRIPTOR", None)
    field = descriptor.fields_by_name.get(head) if descriptor is not None else None
    if field is None:  # e.g. a request that could not be decoded: the edge check refuses it
        return
    repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
    value = getattr(message, head)
    for item in list(value) if repeated else [value]:
        if rest:
            yield from _values(item, rest)
        elif isinstance(item, str) and item:
            yield item


def _where(text: str, defaults: Defaults, project_only: bool) -> tuple[str, str] | None:
    """The (entity, project) a reference or project names, or None if it is malformed (the domain refuses it)."""
    try:
        if project_only:
            project = parse_project(text, defaults)
            return project.entity, project.project
        collection = parse_reference(text, defaults).collection
        return collection.entity, collection.project
    except RegistryError:
        return None


def authorize(method: str, request: Any, principal: Principal, headers: Mapping[str, str]) -> None:
    """Raises PermissionDenied unless ``principal`` may make this call; see :data:`RULES`."""
    rule = RULES[method]
    if principal.allows(Role.ADMIN):
        return
    defaults = Defaults(entity=headers.get(ENTITY_HEADER) or None, project=headers.get(PROJECT_HEADER) or None)
    checks = [(path, rule.role, False) for path in rule.fields]
    checks += [(path, rule.role, True) for path in rule.projects]
    checks += [(path, Role.READER, False) for path in rule.reads]
    for path, role, project_only in checks if request is not None else ():
        for text in _values(request, path):
            where = _where(text, defaults, project_only)
            if where is not None and not principal.allows(role, *where):
                raise denied(principal, role, "/".join(where))
    # A call naming no project (or only malformed ones, which the service refuses) needs the role somewhere.
    if not principal.allows(rule.role):
        raise denied(principal, rule.role, "*")


class TokenAuthenticator:
    """Turns a bearer secret into a principal: the services' shared secret, or a token from the table.

    Lookups are cached for ``cache_seconds`` (revocations reach this service within that
    time), and so are unknown secrets, so a flood of bad tokens costs no database work.
    """

    def __init__(self, tokens: Tokens, service_secret: str | None, cache_seconds: float = DEFAULT_CACHE_SECONDS):
        self._tokens = tokens
        self._service_secret = service_secret
        self._cache: ExpiringCache[TokenView | None] = ExpiringCache(cache_seconds)

    def __call__(self, secret: str | None) -> Principal:
        if secret is None:
            raise Unauthenticated(
                "this call needs a token: send the header 'authorization: Bearer <token>' "
                "(mreg reads it from MREG_TOKEN or the profile `mreg login` writes)",
                "TOKEN_MISSING",
            )
        if self._service_secret and same_secret(secret, self._service_secret):
            return SERVICE
        token = self._cache.get(secret, self._tokens.by_secret)
        if token is None:
            raise Unauthenticated("the token is not valid: no token has this secret", "TOKEN_INVALID")
        refusal = token.refusal(utcnow())
        if refusal is not None:
            state = "was revoked" if refusal.value == "TOKEN_REVOKED" else "has expired"
            raise Unauthenticated(f"token {token.name!r} {state}", refusal.value, {"principal": token.name})
        return token.principal()
