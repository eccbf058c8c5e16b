"""Create (or reuse) an account for a script, and print a token pair for it."""

import json
import secrets

from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from rest_framework_simplejwt.tokens import RefreshToken


class Command(BaseCommand):
    help = (
        "Create an API user (with a random password unless --password is given) and "
        "print a JSON object with its id, an access token and a refresh token. With "
        "--existing, issue tokens for a user that already exists."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument("--email", default="")
        parser.add_argument("--password", help="Default: a random one, not printed.")
        parser.add_argument(
            "--existing", action="store_true", help="Issue tokens for an existing user."
        )

    def handle(self, *args, **options) -> None:
        users = get_user_model().objects
        username = options["username"]
        user = users.filter(username=username).first()
        if options["existing"]:
            if user is None:
                raise CommandError(f"No user named {username!r}.")
        elif user is not None:
            raise CommandError(f"User {username!r} exists; use --existing for new tokens.")
        else:
            try:
                get_user_model()._meta.get_field("username").clean(username, None)
            except ValidationError as exc:
                raise CommandError(f"Invalid username: {' '.join(exc.messages)}") from None
            if options["password"]:
                try:
                    password_validation.validate_password(
                        options["password"], get_user_model()(username=username)
                    )
                except ValidationError as exc:
                    raise CommandError(f"Weak password: {' '.join(exc.messages)}") from None
            user = users.create_user(
                username=username,
                email=options["email"],
                password=options["password"] or secrets.token_urlsafe(32),
            )
        if not user.is_active:
            raise CommandError(f"User {username!r} is not active.")
        refresh = RefreshToken.for_user(user)
        self.stdout.write(
            json.dumps(
                {
                    "user_id": str(user.pk),
                    "username": user.username,
                    "access": str(refresh.access_token),
                    "refresh": str(refresh),
                },
                indent=2,
            )
        )
