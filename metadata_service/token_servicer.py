"""gRPC servicer for mreg.metadata.v1.TokenService: translates protos to the token use case and back."""

from __future__ import annotations

from datetime import UTC

import grpc

from mreg.metadata.v1 import token_service_pb2 as pb
from mreg.metadata.v1 import token_service_pb2_grpc as pb_grpc
from mreg.metadata_service.catalog.tokens import Tokens, TokenView
from mreg.metadata_service.errors import FailedPrecondition, Reason
from mreg.metadata_service.models import utcnow
from mreg.metadata_service.servicer import caller_of, handles_domain_errors, timestamp_pb
from mreg.server_runtime.edge import add_servicer_to_server
from mreg.server_runtime.principals import Principal, current_principal


def token_pb(view: TokenView) -> pb.Token:
    return pb.Token(
        name=view.name,
        role=f"ROLE_{view.role.name}",
        scope=view.scope,
        create_time=timestamp_pb(view.create_time),
        expire_time=timestamp_pb(view.expire_time),
        revoke_time=timestamp_pb(view.revoke_time),
        creator=view.creator,
    )


def _principal_pb(principal: Principal) -> pb.Token:
    return pb.Token(name=principal.name, role=f"ROLE_{principal.role.name}", scope=principal.scope)


class TokenServicer(pb_grpc.TokenServiceServicer):
    def __init__(self, tokens: Tokens, authentication_enabled: bool) -> None:
        self.tokens = tokens
        self.authentication_enabled = authentication_enabled

    def _require_authentication(self, what: str) -> None:
        if not self.authentication_enabled:
            raise FailedPrecondition(
                f"{what} needs authentication, which is off: start the services with --auth (the first start "
                "writes an admin token) and use that token",
                reason=Reason.AUTHENTICATION_DISABLED,
            )

    @handles_domain_errors
    def CreateToken(self, request: pb.CreateTokenRequest, context: grpc.ServicerContext) -> pb.CreateTokenResponse:
        self._require_authentication("creating a token")
        expire = request.expire_time.ToDatetime(tzinfo=UTC) if request.HasField("expire_time") else None
        view, secret = self.tokens.create(caller_of(context), request.name, request.role, request.scope, expire)
        return pb.CreateTokenResponse(token=token_pb(view), secret=secret)

    @handles_domain_errors
    def ListTokens(self, request: pb.ListTokensRequest, context: grpc.ServicerContext) -> pb.ListTokensResponse:
        page = self.tokens.list(request.page_size, request.page_token)
        return pb.ListTokensResponse(tokens=[token_pb(v) for v in page.items], next_page_token=page.next_page_token)

    @handles_domain_errors
    def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext) -> pb.RevokeTokenResponse:
        self._require_authentication("revoking a token")
        return pb.RevokeTokenResponse(token=token_pb(self.tokens.revoke(caller_of(context), request.name)))

    @handles_domain_errors
    def IntrospectToken(
        self, request: pb.IntrospectTokenRequest, context: grpc.ServicerContext
    ) -> pb.IntrospectTokenResponse:
        view = self.tokens.by_secret(request.secret) if request.secret else None
        if view is None:
            return pb.IntrospectTokenResponse(active=False)
        return pb.IntrospectTokenResponse(active=view.refusal(utcnow()) is None, token=token_pb(view))

    @handles_domain_errors
    def GetCaller(self, request: pb.GetCallerRequest, context: grpc.ServicerContext) -> pb.GetCallerResponse:
        return pb.GetCallerResponse(
            token=_principal_pb(current_principal()), authentication_enabled=self.authentication_enabled
        )


def add_to_server(servicer: TokenServicer, server: grpc.Server) -> None:
    add_servicer_to_server(servicer, server, pb, "TokenService")
