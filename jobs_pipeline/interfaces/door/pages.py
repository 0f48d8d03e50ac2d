"""The door's own pages: sign in, and a refusal that says why. Plain HTML, no script.

Rendered from Jinja2 templates (`templates/`) with autoescape on: whatever a page shows
that came from a request or a setting (an email, a path, a header's name) is escaped.
"""

from typing import Any

from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

environment = Environment(
    loader=PackageLoader("jobs_pipeline.interfaces.door", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html", "html.j2")),
    undefined=StrictUndefined,
)
# Never cached, never framed: a sign-in form inside another site's frame is a trap.
HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
    " form-action 'self'; frame-ancestors 'none'",
}


def page(template: str, title: str, status: int, **values: Any) -> HTMLResponse:
    values.setdefault("problem", None)
    html = environment.get_template(template).render(title=title, **values)
    return HTMLResponse(html, status_code=status, headers=HEADERS)


def sign_in_page(next_path: str, *, message: str | None = None, status: int = 200) -> HTMLResponse:
    return page("sign-in.html.j2", "Sign in", status, problem=message, next_path=next_path)


def sso_page(header: str) -> HTMLResponse:
    """Behind a company sign-on: no token here; the sign-on says who is asking."""
    return page(
        "sso.html.j2",
        "Sign in through your company's sign-on",
        401,
        problem="Your company sign-on did not say who you are.",
        header=header,
    )


def signed_in_page(email: str, access: str, next_path: str) -> HTMLResponse:
    return page(
        "signed-in.html.j2", "Signed in", 200, email=email, access=access, next_path=next_path
    )


def forbidden_page(email: str | None, reason: str) -> HTMLResponse:
    return page("refused.html.j2", "Not allowed", 403, problem=reason, email=email, advice=None)


def slow_down_page() -> HTMLResponse:
    return page(
        "refused.html.j2",
        "Slow down",
        429,
        problem="Too many sign-ins from your address in a short time.",
        email=None,
        advice=(
            "Wait a minute, then sign in again. If you are one of many people behind one"
            " address, ask an operator: the limit is per client address (docs/deploying.md)."
        ),
    )
