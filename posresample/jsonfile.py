"""Reading a JSON file a user gave: any failure is one line of the caller's error type."""

from __future__ import annotations

import json


def read_json(path: str, what: str, error: type[Exception], hint: str = ""):
    """The parsed contents of `path`; `what` names it in the message ("confusion file", ...)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{what} {path} is not JSON ({exc}){hint}") from None
