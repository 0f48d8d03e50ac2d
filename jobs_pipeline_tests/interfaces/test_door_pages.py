"""The door's pages escape whatever they show that came from a request or a setting, and
are never cached or framed.
"""

from jobs_pipeline.interfaces.door.pages import (
    forbidden_page,
    sign_in_page,
    signed_in_page,
    slow_down_page,
    sso_page,
)

HOSTILE = "<script>alert('x')</script>"


def test_every_page_escapes_what_it_shows():
    pages = [
        sign_in_page(HOSTILE, message=HOSTILE),
        sso_page(HOSTILE),
        signed_in_page(HOSTILE, HOSTILE, HOSTILE),
        forbidden_page(HOSTILE, HOSTILE),
    ]
    for page in pages:
        html = bytes(page.body).decode()
        assert HOSTILE not in html
        assert "&lt;script&gt;" in html
        assert page.headers["X-Frame-Options"] == "DENY"
        assert page.headers["Cache-Control"] == "no-store"


def test_each_page_says_what_it_is_with_its_status():
    assert sign_in_page("/runs").status_code == 200
    assert "name='next' value='/runs'" in bytes(sign_in_page("/runs").body).decode()
    assert forbidden_page(None, "why").status_code == 403
    assert "Sign in" in bytes(forbidden_page(None, "why").body).decode()
    assert "Sign out" in bytes(forbidden_page("a@example.com", "why").body).decode()
    assert slow_down_page().status_code == 429
    assert sso_page("X-Email").status_code == 401
