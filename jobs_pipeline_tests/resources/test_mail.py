from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from jobs_pipeline.resources.mail import Mailer
from jobs_pipeline_tests.support.processes import free_port
from jobs_pipeline_tests.support.receivers import Mailbox


def message(to: str) -> EmailMessage:
    mail = EmailMessage()
    mail["To"] = to
    mail["Subject"] = "Your trial ends in 3 days"
    mail.set_content("Hello")
    return mail


def test_without_smtp_messages_become_eml_files(tmp_path):
    mailer = Mailer(outbox_dir=str(tmp_path / "outbox"), sender="jobs@example.com")

    where = mailer.send(message("trader@example.com"))

    (written,) = (tmp_path / "outbox").glob("*.eml")
    assert where == str(written)
    parsed = message_from_bytes(written.read_bytes(), policy=policy.default)
    assert (parsed["To"], parsed["From"]) == ("trader@example.com", "jobs@example.com")
    assert parsed["Subject"] == "Your trial ends in 3 days"


def test_smtp_with_login(tmp_path):
    mailbox = Mailbox()
    logins: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password == b"s3cret-pass")

    port = free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=authenticator,
        auth_require_tls=False,
    )
    controller.start()
    try:
        Mailer(host="127.0.0.1", port=port, username="jobs", password="s3cret-pass").send(
            message("trader@example.com")
        )
    finally:
        controller.stop()

    assert logins == [("jobs", "s3cret-pass")]
    assert len(mailbox.to("trader@example.com")) == 1


def test_the_eml_folder_follows_the_state_folder_not_database_url(tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db.example/elsewhere")
    monkeypatch.delenv("JOBS_PIPELINE_STATE_DIR", raising=False)
    checkout = Path(__file__).resolve().parents[2]
    assert Mailer().eml_folder() == checkout / ".jobs-pipeline" / "outbox"

    monkeypatch.setenv("JOBS_PIPELINE_STATE_DIR", str(tmp_path / "state"))
    assert Mailer().eml_folder() == tmp_path / "state" / "outbox"
    assert Mailer(outbox_dir=str(tmp_path / "mine")).eml_folder() == tmp_path / "mine"
    assert Mailer(host="127.0.0.1").eml_folder() is None  # over SMTP: no files


def test_an_eml_file_keeps_the_message_headers(tmp_path):
    mail = message("trader@example.com")
    mail["Message-ID"] = "<0123456789abcdef0123456789abcdef@jobs-pipeline>"
    mail["X-Jobs-Pipeline-Template"] = "trial-ending-3d"

    written = Path(Mailer(outbox_dir=str(tmp_path)).send(mail))

    parsed = message_from_bytes(written.read_bytes(), policy=policy.default)
    assert parsed["Message-ID"] == "<0123456789abcdef0123456789abcdef@jobs-pipeline>"
    assert parsed["X-Jobs-Pipeline-Template"] == "trial-ending-3d"
