"""The product's settings with the bare comparison views of bench/load.py mounted."""

from chatbot_project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.bare"
