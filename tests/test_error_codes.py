"""The contract's error codes are one enum, and one table gives each its HTTP status."""

from chatkit.exceptions import ERRORS
from conversations.errors import RUN_FAILURES, DomainError, ErrorCode
from conversations.llm import ProviderError
from conversations.models import Run


def _subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]


def test_every_code_the_api_answers_with_has_one_status():
    assert set(ERRORS) == set(ErrorCode) - set(RUN_FAILURES)


def test_every_domain_error_code_has_a_status():
    for error in _subclasses(DomainError):
        assert error.code in ERRORS, error


def test_provider_errors_store_run_failure_codes():
    for error in (ProviderError, *_subclasses(ProviderError)):
        assert error.code in Run.ErrorCode.values, error
    assert Run.ErrorCode.values == [code.value for code in RUN_FAILURES]
