"""The docs hold together: README.md is short and links every page, every link leads
somewhere, docs/development.md's layout is the package's, and every command shown runs.

Read from the files as they are, nothing mocked: a module added, a link moved or a
subcommand renamed fails here, naming what to fix.
"""

import contextlib
import io
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from jobs_pipeline.interfaces.cli.common import UsageError
from jobs_pipeline.interfaces.cli.parser import build_parser
from jobs_pipeline.interfaces.cli.runs import resolve_job_name
from jobs_pipeline.job_parts.learned_normal import result_key
from jobs_pipeline.job_parts.results import JobResult
from jobs_pipeline.jobs.discipline_stats_rollup import RollupDryRun, RollupResult
from jobs_pipeline.jobs.email_delivery import EmailDeliveryDryRun, EmailDeliveryResult
from jobs_pipeline.jobs.global_override_check import OverrideCheckResult
from jobs_pipeline.jobs.history_retention import HistoryRetentionDryRun, HistoryRetentionResult
from jobs_pipeline.jobs.promo_cleanup import PromoCleanupDryRun, PromoCleanupResult
from jobs_pipeline.jobs.tier_expiration import TierExpirationDryRun, TierExpirationResult
from jobs_pipeline.jobs.trial_reminder import TrialReminderDryRun, TrialReminderResult
from jobs_pipeline.operator_tools.undo import UndoResult

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
DOCS = REPOSITORY / "docs"
DEVELOPMENT = DOCS / "development.md"
PACKAGE = REPOSITORY / "jobs_pipeline"
MAKEFILE = REPOSITORY / "Makefile"

README_MAX_BYTES = 10_500
# Folders the layout covers by listing the folder itself, not each file in it.
COVERED_BY_THEIR_FOLDER = ("storage/migrations/versions", "emails/templates")
# What a placeholder in a documented command stands for when the command is parsed.
PLACEHOLDERS = {
    "JOB": "tier-expiration",
    "RUN_ID": "c436e454-0b6c-4f6e-9d1a-2b3c4d5e6f70",
    "ID": "1",
    "N": "1",
    "EMAIL": "admin@example.com",
    "ID_OR_EMAIL": "ann@example.com",
    "EMAIL_OR_ID": "ann@example.com",
    "TIMESTAMP": "2026-12-06T02:00:00Z",
    "HOST:PORT": "127.0.0.1:4000",
}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})(.*)$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
ENV_ASSIGNMENT = r"[A-Za-z_][A-Za-z0-9_]*=(?:'[^']*'|\"[^\"]*\"|\S)*"
COMMAND_LINE = re.compile(rf"^\s*(?:\$\s+)?(?:{ENV_ASSIGNMENT}\s+)*(?:\S*/)?jobs-pipeline(?:\s|$)")
MAKE_COMMAND = re.compile(
    rf"(?:^|&&|\|\||;)\s*(?:\$\s+)?(?:{ENV_ASSIGNMENT}\s+)*make((?:[ \t]+[^\s;&|#`]+)*)"
)


@dataclass
class CodeBlock:
    line: int  # where its opening fence is, counted from 1
    info: str
    lines: list[str]


@dataclass
class Page:
    path: Path
    blocks: list[CodeBlock] = field(default_factory=list)
    # Each paragraph of text outside code blocks, its lines joined: (first line, text).
    paragraphs: list[tuple[int, str]] = field(default_factory=list)
    headings: list[tuple[int, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path.relative_to(REPOSITORY))


def read_page(path: Path) -> Page:
    page = Page(path)
    fence: str | None = None
    indent = ""
    block: CodeBlock | None = None
    paragraph: list[str] = []
    paragraph_start = 0

    def end_paragraph() -> None:
        if paragraph:
            page.paragraphs.append((paragraph_start, " ".join(part.strip() for part in paragraph)))
            paragraph.clear()

    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if block is not None and fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                page.blocks.append(block)
                block = None
                fence = None
            else:
                block.lines.append(line.removeprefix(indent))
            continue
        opening = FENCE.match(line)
        if opening:
            end_paragraph()
            indent, fence, info = opening.group(1), opening.group(2), opening.group(3).strip()
            block = CodeBlock(number, info, [])
            continue
        heading = HEADING.match(line)
        if heading:
            end_paragraph()
            page.headings.append((number, heading.group(2)))
            continue
        if not line.strip():
            end_paragraph()
            continue
        if not paragraph:
            paragraph_start = number
        paragraph.append(line)
    end_paragraph()
    assert block is None, f"{page.name}:{block.line}: a code block is never closed"
    return page


def pages() -> list[Page]:
    return [read_page(README), *(read_page(path) for path in sorted(DOCS.glob("*.md")))]


def anchors(page: Page) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped,
    spaces as hyphens, a repeated one numbered."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, heading in page.headings:
        text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Page) -> list[tuple[int, str]]:
    """Every link and image target in the page's text (not in its code)."""
    found: list[tuple[int, str]] = []
    for number, text in page.paragraphs:
        without_code = INLINE_CODE.sub("", text)
        found.extend((number, target) for target in LINK.findall(without_code))
    return found


def test_the_readme_is_short_and_links_every_page():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes, over {README_MAX_BYTES}"
    linked = {
        (README.parent / target.split("#")[0]).resolve()
        for _, target in links(read_page(README))
        if not SCHEME.match(target) and not target.startswith("#")
    }
    unlinked = [path.name for path in sorted(DOCS.glob("*.md")) if path.resolve() not in linked]
    assert not unlinked, f"docs pages README.md does not link: {', '.join(unlinked)}"


def test_the_readme_opens_with_its_two_commands():
    """CI and the tests rely on these two; they come first, in the first code block."""
    first = read_page(README).blocks[0]
    commands = [without_comment(line).strip() for line in first.lines if line.strip()]
    assert commands == ["make dev", "make test"], first.lines


def test_every_relative_link_leads_to_a_file_and_heading_that_exist():
    every_page = pages()
    by_path = {page.path.resolve(): page for page in every_page}
    failures: list[str] = []
    for page in every_page:
        for number, target in links(page):
            if SCHEME.match(target):
                continue
            where = f"{page.name}:{number}: {target}"
            path_part, _, anchor = target.partition("#")
            destination = (page.path.parent / path_part).resolve() if path_part else page.path
            if not destination.is_relative_to(REPOSITORY):
                failures.append(f"{where} leads out of the repository")
                continue
            if not destination.exists():
                failures.append(f"{where}: no such file")
                continue
            if anchor and destination.suffix == ".md":
                linked_page = by_path.get(destination) or read_page(destination)
                if anchor not in anchors(linked_page):
                    failures.append(f"{where}: no heading #{anchor} in {linked_page.name}")
    assert not failures, "broken links:\n" + "\n".join(failures)


def layout_block() -> CodeBlock:
    page = read_page(DEVELOPMENT)
    (layout_line,) = [number for number, text in page.headings if text == "Layout"]
    following = [block for block in page.blocks if block.line > layout_line]
    assert following, "docs/development.md's Layout section has no code block"
    return following[0]


def layout_entries(block: CodeBlock) -> tuple[list[str], list[str]]:
    """The paths the layout lists, relative to the repository, and the lines it could not
    read. A line is a path, two spaces or more, and what it holds; an indented path is
    inside the last folder written without indent."""
    entries: list[str] = []
    malformed: list[str] = []
    folder = ""
    for offset, line in enumerate(block.lines, start=1):
        if not line.strip():
            continue
        entry = re.match(r"^( *)(\S+) {2,}(\S.*)$", line)
        if entry is None:
            malformed.append(f"line {block.line + offset}: {line.strip()!r}")
            continue
        indented, path = bool(entry.group(1)), entry.group(2)
        if indented:
            if not folder:
                malformed.append(f"line {block.line + offset}: indented under no folder")
                continue
            entries.append(folder + path)
        else:
            entries.append(path)
            folder = path if path.endswith("/") else ""
    return entries, malformed


def package_modules() -> set[str]:
    """Every module (but `__init__.py`) and folder of the package, relative to it, folders
    ending in `/`; what is inside a folder the layout covers as a whole is left out."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*"):
        relative = path.relative_to(PACKAGE)
        if "__pycache__" in relative.parts:
            continue
        if any(
            relative.is_relative_to(folder) and str(relative) != folder
            for folder in COVERED_BY_THEIR_FOLDER
        ):
            continue
        if path.is_dir():
            found.add(f"{relative}/")
        elif path.suffix == ".py" and path.name != "__init__.py":
            found.add(str(relative))
    return found


def test_the_layout_lists_every_module_of_the_package_and_nothing_else():
    block = layout_block()
    entries, malformed = layout_entries(block)
    assert not malformed, "docs/development.md's layout has lines it cannot read:\n" + "\n".join(
        malformed
    )
    repeated = sorted({entry for entry in entries if entries.count(entry) > 1})
    gone = [
        entry
        for entry in entries
        if not (
            (REPOSITORY / entry).is_dir() if entry.endswith("/") else (REPOSITORY / entry).is_file()
        )
    ]
    listed = {entry.removeprefix("jobs_pipeline/") for entry in entries}
    missing = sorted(package_modules() - listed)
    problems = []
    if missing:
        problems.append("not listed: " + ", ".join(f"jobs_pipeline/{path}" for path in missing))
    if gone:
        problems.append("listed but not there (a folder ends in /): " + ", ".join(gone))
    if repeated:
        problems.append("listed twice: " + ", ".join(repeated))
    assert not problems, "docs/development.md's layout:\n" + "\n".join(problems)


def test_the_layout_lists_the_layers_in_the_order_import_linter_keeps():
    contracts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"
    ]
    (layered,) = [contract["layers"] for contract in contracts if contract["type"] == "layers"]
    # A layer of siblings independent of one another (`a | b`) is listed in that order.
    layers = [module.strip() for layer in layered for module in layer.split("|")]
    entries, _ = layout_entries(layout_block())
    shown: list[str] = []
    for entry in entries:
        top = entry.removeprefix("jobs_pipeline/").split("/")[0].removesuffix(".py")
        if entry.startswith("jobs_pipeline/") and top in layers and top not in shown:
            shown.append(top)
    assert shown == layers, f"the layout's layers {shown}, pyproject.toml's {layers}"


def logical_lines(block: CodeBlock) -> list[tuple[int, str]]:
    """The block's lines, those ending in a backslash joined with the next."""
    joined: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for offset, line in enumerate(block.lines, start=1):
        if not pending:
            start = block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((start, pending + line))
        pending = ""
    if pending:
        joined.append((start, pending))
    return joined


def without_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment: unquoted, after a space or first."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def first_command(line: str) -> list[str]:
    """The words of the line's first command: up to `&`, `|`, `;` or a redirection, with
    the prompt and environment assignments before it left out."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    words: list[str] = []
    for word in lexer:
        if word and all(char in lexer.punctuation_chars for char in word):
            break
        words.append(word)
    while words and (words[0] == "$" or re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0])):
        words.pop(0)
    return words


def as_sample(word: str) -> str:
    """A word with its `[`/`]` (optional parts) dropped and a placeholder made a value."""
    word = word.replace("[", "").replace("]", "")
    inner = word[1:-1].upper().replace("-", "_") if word.startswith("<") else word
    return PLACEHOLDERS.get(inner, "sample" if word.startswith("<") else word)


def test_every_jobs_pipeline_command_shown_parses():
    parser = build_parser()
    failures: list[str] = []
    checked = 0
    for page in pages():
        for block in page.blocks:
            for number, line in logical_lines(block):
                if not COMMAND_LINE.match(line):
                    continue
                where = f"{page.name}:{number}: {line.strip()}"
                try:
                    words = first_command(without_comment(line))
                except ValueError as error:
                    failures.append(f"{where}\n    not a shell command: {error}")
                    continue
                if not words or Path(words[0]).name != "jobs-pipeline":
                    failures.append(f"{where}\n    does not start with jobs-pipeline: {words}")
                    continue
                arguments = [sample for sample in map(as_sample, words[1:]) if sample]
                complaint = io.StringIO()
                try:
                    with contextlib.redirect_stderr(complaint):
                        parsed = parser.parse_args(arguments)
                except SystemExit:
                    said = complaint.getvalue().strip().splitlines()[-1:]
                    failures.append(
                        f"{where}\n    jobs-pipeline {shlex.join(arguments)}: {' '.join(said)}"
                    )
                    continue
                checked += 1
                if parsed.command == "run":
                    try:
                        resolve_job_name(parsed.job)
                    except UsageError as error:
                        failures.append(f"{where}\n    {error}")
    assert not failures, "commands the CLI does not take:\n" + "\n".join(failures)
    assert checked >= 15, f"only {checked} jobs-pipeline commands found in the docs' code"


def makefile_targets() -> set[str]:
    targets: set[str] = set()
    for line in MAKEFILE.read_text().splitlines():
        rule = re.match(r"^([^\s:#=][^:=]*?)\s*:(?![=:])", line)
        if rule:
            targets.update(
                name for name in rule.group(1).split() if not name.startswith((".", "$"))
            )
    return targets


def test_every_make_command_shown_names_a_target_the_makefile_has():
    targets = makefile_targets()
    assert {"dev", "test", "lint", "install"} <= targets, targets
    failures: list[str] = []
    shown: set[str] = set()
    for page in pages():
        code = [
            (number, without_comment(line))
            for block in page.blocks
            for number, line in logical_lines(block)
        ]
        code += [
            (number, span[1])
            for number, text in page.paragraphs
            for span in INLINE_CODE.findall(text)
        ]
        for number, text in code:
            for match in MAKE_COMMAND.finditer(text):
                words = match.group(1).split()
                for target in [w for w in words if not w.startswith("-") and "=" not in w]:
                    shown.add(target)
                    if target not in targets:
                        failures.append(f"{page.name}:{number}: make {target}: no such target")
    assert not failures, "\n".join(failures)
    assert {"dev", "test"} <= shown, f"README's two commands not found; shown: {shown}"


# The result tables: each job's row names every key of its result, and of its dry run's.
RESULT_MODELS: dict[str, tuple[type[JobResult], type[JobResult]]] = {
    "tier-expiration": (TierExpirationResult, TierExpirationDryRun),
    "global-override-check": (OverrideCheckResult, OverrideCheckResult),
    "promo-cleanup": (PromoCleanupResult, PromoCleanupDryRun),
    "discipline-stats-rollup": (RollupResult, RollupDryRun),
    "trial-reminder": (TrialReminderResult, TrialReminderDryRun),
    "email-delivery": (EmailDeliveryResult, EmailDeliveryDryRun),
    "history-retention": (HistoryRetentionResult, HistoryRetentionDryRun),
    "undo (`undo_run`)": (UndoResult, UndoResult),
}


def result_table() -> dict[str, tuple[str, str]]:
    """docs/operations.md's table under "Results": job -> (result cell, dry run cell)."""
    text = (DOCS / "operations.md").read_text()
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    cells = [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows]
    return {job: (result, dry) for job, result, dry in cells}


def test_the_result_tables_name_every_key_of_each_jobs_result():
    table = result_table()
    assert set(table) == set(RESULT_MODELS)
    for job, models in RESULT_MODELS.items():
        for model, cell, dry_only in zip(models, table[job], ({"asOf"}, set()), strict=True):
            if cell.startswith("the same"):
                cell = table[job][0]
            named = set(re.findall(r"`([A-Za-z0-9]+)`", cell))
            keys = {result_key(model, name) for name in model.model_fields}
            # `"dryRun": true` is the dry run's column; a model both share has its `asOf` too.
            missing = keys - named - {"dryRun"} - (dry_only if models[0] is models[1] else set())
            assert not missing, f"{job}: docs/operations.md's result table lacks {missing}"
