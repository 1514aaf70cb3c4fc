"""The exceptions the ClickHouse gateway answers with, as a ClickHouse server words them."""

from __future__ import annotations

import re

_ERROR_CODE = re.compile(r"Code: (\d+)\. ")

# ClickHouse error codes the gateway raises itself.
SYNTAX_ERROR = 62
NOT_IMPLEMENTED = 48
TIMEOUT_EXCEEDED = 159
READONLY = 164
ACCESS_DENIED = 497
UNKNOWN_SETTING = 115
CANNOT_DECOMPRESS = 271
AUTHENTICATION_FAILED = 516
STD_EXCEPTION = 1001


class GatewayError(Exception):
    """A ClickHouse exception: ``code`` plus a ``Code: N. DB::Exception: ...`` message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, code: int, text: str, name: str) -> GatewayError:
        """The error ClickHouse would raise with ``code``, ``text`` and the code's ``name``."""
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({name})")

    @classmethod
    def from_engine(cls, error: Exception) -> GatewayError:
        """A chDB exception as the server reports it (its own code, else STD_EXCEPTION)."""
        text = str(error)
        found = _ERROR_CODE.search(text)
        if found is None:
            return cls.of(STD_EXCEPTION, text or type(error).__name__, "STD_EXCEPTION")
        return cls(int(found.group(1)), text[found.start() :].strip())
