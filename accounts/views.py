from django.conf import settings
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import exceptions, generics, permissions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import RefreshToken
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from api_common import AuthThrottle
from conversations.errors import ErrorCode

from .serializers import (
    LogoutSerializer,
    RegisterSerializer,
    UserSerializer,
    revoke_refresh_token,
)
from .services import user_create

TokenPairSerializer = inline_serializer(
    "TokenPair", fields={"access": serializers.CharField(), "refresh": serializers.CharField()}
)


class RegisterView(generics.GenericAPIView):
    """Create an account (403 when registration is switched off)."""

    serializer_class = RegisterSerializer
    permission_classes = (permissions.AllowAny,)
    authentication_classes = ()
    throttle_classes = (AuthThrottle,)
    # Domain errors by method, for the OpenAPI document (chatkit.schema).
    raises = {"post": [ErrorCode.PERMISSION_DENIED]}

    @extend_schema(responses={201: UserSerializer})
    def post(self, request: Request) -> Response:
        if not settings.REGISTRATION_OPEN:
            raise exceptions.PermissionDenied("Registration is closed.")
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = user_create(**serializer.validated_data)
        return Response(UserSerializer(user).data, status=status.HTTP_201_CREATED)


class TokenView(TokenObtainPairView):
    """Exchange a username and password for an access and a refresh token."""

    throttle_classes = (AuthThrottle,)
    raises = {"post": [ErrorCode.AUTHENTICATION_FAILED]}

    @extend_schema(responses={200: TokenPairSerializer})
    def post(self, request: Request, *args, **kwargs) -> Response:
        return super().post(request, *args, **kwargs)


class TokenRotateView(TokenRefreshView):
    """Exchange a refresh token for a new pair; the old refresh token stops working."""

    throttle_classes = (AuthThrottle,)
    raises = {"post": [ErrorCode.AUTHENTICATION_FAILED]}

    @extend_schema(responses={200: TokenPairSerializer})
    def post(self, request: Request, *args, **kwargs) -> Response:
        return super().post(request, *args, **kwargs)


class LogoutView(generics.GenericAPIView):
    """Revoke a refresh token. The token itself is the credential."""

    serializer_class = LogoutSerializer
    permission_classes = (permissions.AllowAny,)
    authentication_classes = ()
    throttle_classes = (AuthThrottle,)
    raises = {"post": [ErrorCode.AUTHENTICATION_FAILED]}

    @extend_schema(
        responses={
            200: inline_serializer("LoggedOut", fields={"revoked": serializers.BooleanField()})
        }
    )
    def post(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            token = RefreshToken(serializer.validated_data["refresh"])
        except TokenError:
            raise exceptions.AuthenticationFailed("Token is invalid or expired.") from None
        revoke_refresh_token(token)
        return Response({"revoked": True})


class MeView(APIView):
    """The authenticated user."""

    @extend_schema(responses={200: UserSerializer})
    def get(self, request: Request) -> Response:
        return Response(UserSerializer(request.user).data)
