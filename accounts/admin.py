from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from .models import User


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    """Accounts, with their UUID shown read-only."""

    readonly_fields = ("id", "date_joined", "last_login")
    list_display = ("username", "email", "id", "is_staff", "date_joined")
