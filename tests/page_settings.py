"""Settings of the browser tests' server: the product's, with the fast password
hasher that the test process uses too (tests/conftest.py). Each browser test
signs a new user up and in; PBKDF2 would cost most of a second per hash."""

from chatbot_project.settings import *  # noqa: F403

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
