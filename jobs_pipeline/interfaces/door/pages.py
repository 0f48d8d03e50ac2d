"""The door's own pages: sign in, and a refusal that says why. Plain HTML, no script."""

from html import escape

from fastapi.responses import HTMLResponse

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto; padding: 0 1rem;
       color: #1d1d1f; }
h1 { font-size: 1.4rem; }
label, input, button { display: block; width: 100%; box-sizing: border-box; font-size: 1rem; }
input { padding: .5rem; margin: .3rem 0 1rem; font-family: monospace; }
button { padding: .6rem; cursor: pointer; }
.problem { background: #fdecea; border-left: 4px solid #c62828; padding: .6rem .8rem; }
.note { color: #555; font-size: .9rem; }
"""


def page(title: str, body: str, status: int) -> HTMLResponse:
    html = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)} · jobs-pipeline</title><style>{STYLE}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    # Never cached, never framed: a sign-in form inside another site's frame is a trap.
    headers = {
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline';"
        " form-action 'self'; frame-ancestors 'none'",
    }
    return HTMLResponse(html, status_code=status, headers=headers)


def problem(text: str | None) -> str:
    return f"<p class='problem' role='alert'>{escape(text)}</p>" if text else ""


def sign_in_page(next_path: str, *, message: str | None = None, status: int = 200) -> HTMLResponse:
    body = (
        f"{problem(message)}"
        "<p>The Dagster UI of the trading journal's jobs is for its admins, and for the"
        " viewers this deployment lists. Sign in with your API token"
        " (<code>jobs-pipeline token create --email YOU</code>, from an operator).</p>"
        "<form method='post' action='/door/sign-in'>"
        f"<input type='hidden' name='next' value='{escape(next_path)}'>"
        "<label for='token'>API token</label>"
        "<input id='token' name='token' type='password' autocomplete='off' required autofocus>"
        "<button type='submit'>Sign in</button></form>"
        "<p class='note'>A session lasts a working day; it ends at once if your token is"
        " revoked or your role changes.</p>"
    )
    return page("Sign in", body, status)


def sso_page(header: str) -> HTMLResponse:
    """Behind a company sign-on: no token here; the sign-on says who is asking."""
    body = (
        f"{problem('Your company sign-on did not say who you are.')}"
        "<p>This door takes who you are from the company sign-on in front of it"
        f" (its <code>{escape(header)}</code> header); it asks for no token. Sign in"
        " through the company sign-on, then open the Dagster UI again.</p>"
    )
    return page("Sign in through your company's sign-on", body, 401)


def signed_in_page(email: str, access: str, next_path: str) -> HTMLResponse:
    body = (
        f"<p>Signed in as <strong>{escape(email)}</strong> ({escape(access)}).</p>"
        f"<p><a href='{escape(next_path)}'>Continue to the Dagster UI</a></p>"
        f"{sign_out_form()}"
    )
    return page("Signed in", body, 200)


def forbidden_page(email: str | None, reason: str) -> HTMLResponse:
    who = f"<p>You are signed in as <strong>{escape(email)}</strong>.</p>" if email else ""
    body = f"{problem(reason)}{who}{sign_out_form() if email else sign_in_link()}"
    return page("Not allowed", body, 403)


def sign_out_form() -> str:
    return (
        "<form method='post' action='/door/sign-out'><button type='submit'>Sign out</button></form>"
    )


def sign_in_link() -> str:
    return "<p><a href='/door/sign-in'>Sign in</a></p>"


def slow_down_page() -> HTMLResponse:
    body = (
        f"{problem('Too many sign-ins from your address in a short time.')}"
        "<p>Wait a minute, then sign in again. If you are one of many people behind one"
        " address, ask an operator: the limit is per client address (docs/deploying.md).</p>"
        f"{sign_in_link()}"
    )
    return page("Slow down", body, 429)
