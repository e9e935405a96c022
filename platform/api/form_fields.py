"""One value per multipart form field: a field sent twice is refused naming it, not read as its last value."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request

from dermground.platform.api.errors import RefusedError

# The rule of a 422 whose form gives one field several values (two images in `file`, ...).
REPEATED_FIELD_RULE = "repeated_field"


def single_form_values(*names: str) -> Callable[[Request], Awaitable[None]]:
    """A dependency refusing (422, rule `repeated_field`, the field) a form that gives one of `names`
    more than once: FastAPI reads a repeated field as its last value, so an endpoint would answer for
    one of two images and not say which."""

    async def check(request: Request) -> None:
        form = await request.form()  # the form FastAPI has already read (Starlette keeps it)
        for name in names:
            count = len(form.getlist(name))
            if count > 1:
                raise RefusedError(422, f"the form gives {name!r} {count} times: send one {name} per request",
                                   rule=REPEATED_FIELD_RULE, field=name)

    return check
