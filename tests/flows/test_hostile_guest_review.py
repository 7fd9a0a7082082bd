"""The reviewer sees what the guest did, not what it wrote to fool them; an approval applies
only the playbook it was given for. On real VMs, a real Prefect server and real Ansible.

A sandbox makes files whose names carry Markdown, HTML and terminal escape sequences: the
diff's Markdown has no line the guest started and the terminal gets no control from it. One
agent-task run (its agent prints escape sequences and names a file with Markdown and HTML)
waits for approval: a decision naming another digest is turned away by Prefect's server and by
`fluid approve`, and a playbook swapped during the wait (with a DIGEST to match) is refused
when approved: nothing reaches production and the refusal is in the audit trail.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import select
import shlex
import subprocess
import time
from collections.abc import Iterator
from uuid import UUID

import pytest
from markdown_it import MarkdownIt
from prefect.flow_runs import resume_flow_run
from prefect.input.actions import read_flow_run_input

from infra.errors import FluidError
from infra.machines import checkpoints, sandboxes
from infra.records import audit, runs
from infra.settings import FluidSettings
from infra.state import capture
from infra.state.diff import compare, markdown, terminal
from infra.state.export import digest
from orchestration import control_plane
from tests.ansible_lint import lint_playbook
from tests.conftest import FLUID, fluid
from tests.flows.test_agent_task import (
    RUN_ID_LINE,
    on_production,
    read_run,
    wait_final,
    wait_waiting,
)

pytestmark = pytest.mark.vm

DIR = "/srv/hostile-review"
# A file name that, rendered raw, ends the table row, forges a "No changes" heading and a row
# of its own, and reaches the UI's HTML renderer.
FORGING = (
    "x`|\n# No changes\n| + | `forged` | row |\n<img src=x onerror=alert(1)>\n"
    "<details open>\n```\n- [link](javascript:alert(1)) *em* _u_ &amp; ~~s~~"
)
# A name and a content that, printed raw, repaint and retitle the operator's terminal.
ESCAPING = "esc\x1b[31mred\x1b]0;pwned\x07\x9b2J"
ESCAPING_CONTENT = "\x1b[2J\x1b]0;pwned\x07cleared?\n# heading\n```\n<script>x</script>\n"
# What the UI must never get from guest text: HTML elements.
HTML_TOKENS = {"html_block", "html_inline"}


def md_tokens(text: str) -> list:
    """The Markdown as CommonMark with GFM tables parses it, nested tokens included."""
    found, stack = [], list(MarkdownIt("commonmark").enable("table").parse(text))
    while stack:
        token = stack.pop(0)
        found.append(token)
        stack[:0] = token.children or []
    return found


def headings(text: str) -> list[str]:
    """Every heading of the Markdown, as the reader sees its text."""
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    return [
        "".join(c.content for c in tokens[i + 1].children or [] if c.content)
        for i, t in enumerate(tokens)
        if t.type == "heading_open"
    ]


def on_terminal(argv: list[str], answer: bytes = b"", timeout: float = 300) -> tuple[int, bytes]:
    """Run `argv` with a pseudo-terminal as stdin, stdout and stderr; type `answer` once it
    asks "[y/N]". Its exit status and everything it wrote."""
    main, child = os.openpty()
    proc = subprocess.Popen(argv, stdin=child, stdout=child, stderr=child)
    os.close(child)
    seen, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([main], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the command ended and closed its end
                break
            if not chunk:
                break
            seen += chunk
            if answer and b"[y/N]" in seen:
                os.write(main, answer)
                answer = b""
        else:
            raise AssertionError(f"{argv} still running after {timeout:.0f} s: {seen[-2000:]!r}")
        return proc.wait(timeout=30), seen
    finally:
        os.close(main)
        if proc.poll() is None:
            proc.kill()


def make_files(box: str, files: dict[str, str], settings: FluidSettings) -> None:
    """Create each file (name → text) under DIR in the guest, names passed as base64."""
    spec = base64.b64encode(json.dumps(files).encode()).decode()
    script = (
        "import base64, json, os\n"
        f"os.makedirs({DIR!r}, exist_ok=True)\n"
        f"for name, text in json.loads(base64.b64decode({spec!r})).items():\n"
        f"    open(os.path.join({DIR!r}, name), 'w').write(text)\n"
    )
    r = sandboxes.run(box, f"python3 -c {shlex.quote(script)}", timeout=120, settings=settings)
    assert r.exit_status == 0, r.stderr_text


@pytest.fixture(scope="module")
def hostile_change(agent_box: sandboxes.Sandbox, settings: FluidSettings) -> Iterator[str]:
    """The shared agent sandbox, checkpointed around files with hostile names and content."""
    box = agent_box.id
    checkpoints.create(box, "review-before", settings)
    try:
        make_files(
            box,
            {FORGING: "# forged heading\n<details open>\n", ESCAPING: ESCAPING_CONTENT},
            settings,
        )
        checkpoints.create(box, "review-after", settings)
        yield box
    finally:
        sandboxes.run(box, f"rm -rf {DIR}", settings=settings)
        for name in ("review-before", "review-after"):
            with contextlib.suppress(FluidError):  # never made: the test failed before
                checkpoints.delete(box, name, settings)


def test_a_file_name_cannot_forge_the_reviewers_markdown(
    hostile_change: str, settings: FluidSettings
) -> None:
    """Headings, the table and the code blocks of the diff artifact are fluid's alone: no
    forged "No changes" heading, no forged row, no HTML element; the names read as written."""
    cs = compare(
        capture.load(hostile_change, "review-before", settings),
        capture.load(hostile_change, "review-after", settings),
        settings=settings,
    )
    keys = {c.key for c in cs.changes}
    assert {f"{DIR}/{FORGING}", f"{DIR}/{ESCAPING}"} <= keys, keys
    md = markdown(cs, whole="/tmp/whole.json")

    assert headings(md) == [f"Changes in {hostile_change} (review-before → review-after)", "Files"]
    tokens = md_tokens(md)
    assert not {t.type for t in tokens} & HTML_TOKENS
    rendered = MarkdownIt("commonmark").enable("table").render(md)
    assert "<img" not in rendered and "<details" not in rendered
    # One table row per change, each name whole in one code span of its own row.
    assert sum(t.type == "tr_open" for t in tokens) == 1 + len(cs.changes)  # with the header
    spans = [t.content for t in tokens if t.type == "code_inline"]
    forging_shown = f"{DIR}/{FORGING}".replace("\n", "\\n")
    assert forging_shown in spans
    assert f"{DIR}/esc\\x1b[31mred\\x1b]0;pwned\\x07\\x9b2J" in spans
    # No line of the Markdown starts with anything the guest wrote.
    for line in md.splitlines():
        assert not line.startswith(("# No", "| + | `forged`", "<img", "<details", "- [link]"))
    # The escape sequences in the content are shown, inside a fence no line of it can close.
    fences = [t for t in tokens if t.type == "fence"]
    assert any("\\x1b]0;pwned\\x07cleared?" in f.content for f in fences)
    assert all("\x1b" not in f.content for f in fences)


def test_the_terminal_gets_no_control_from_guest_names_or_content(
    hostile_change: str, settings: FluidSettings
) -> None:
    """`fluid diff` prints names and text diffs with every control shown as an escape; in
    color, the only ESC sequences are fluid's own."""
    r = fluid("diff", hostile_change, "--from", "review-before", "--to", "review-after")
    assert b"\x1b" not in r.stdout and b"\x07" not in r.stdout and b"\xc2\x9b" not in r.stdout
    assert b"esc\\x1b[31mred\\x1b]0;pwned\\x07\\x9b2J" in r.stdout
    assert b"+\\x1b[2J\\x1b]0;pwned\\x07cleared?" in r.stdout
    # A name's newline starts no line of its own, in the list or in a diff's header.
    assert not [ln for ln in r.stdout.splitlines() if ln.lstrip().startswith(b"# No changes")]
    assert b"x`|\\n# No changes\\n" in r.stdout

    cs = compare(
        capture.load(hostile_change, "review-before", settings),
        capture.load(hostile_change, "review-after", settings),
        settings=settings,
    )
    colored = terminal(cs, color=True)
    ours = re.compile(r"\x1b\[(?:3[123]|0)m")
    assert ours.search(colored) and "\x1b" not in ours.sub("", colored)


def test_sandbox_exec_shows_controls_on_a_terminal_and_passes_bytes_to_a_pipe(
    agent_box: sandboxes.Sandbox,
) -> None:
    """On a terminal `fluid sandbox exec` shows the guest's escape sequences instead of
    sending them; into a pipe its output stays byte for byte."""
    command = ["printf", "\\033]0;pwned\\007\\033[31mred\\n"]
    piped = fluid("sandbox", "exec", agent_box.id, "--", *command)
    assert piped.stdout == b"\x1b]0;pwned\x07\x1b[31mred\n"

    status, seen = on_terminal([FLUID, "sandbox", "exec", agent_box.id, "--", *command])
    assert status == 0, seen
    assert b"\x1b" not in seen and b"\x07" not in seen
    assert b"\\x1b]0;pwned\\x07\\x1b[31mred" in seen


# --- one agent-task run, waiting for approval ----------------------------------------------

RUN_FILE = "<img src=x onerror=alert(1)> `tick` | pipe # hash *em*.txt"


@pytest.fixture(scope="module")
def waiting_run(
    production_vm: dict, prefect_stack: control_plane.ControlPlane, tmp_path_factory
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`fluid run` of a scripted agent that prints escape sequences and writes a file whose
    name carries HTML and Markdown; yields once the run waits for approval of attempt 1."""
    steps = [
        {"run": "printf '\\033]0;pwned\\007\\033[2J\\033[31mred\\n'"},
        {"write": f"{DIR}/hello.txt", "content": "hello\n"},
        {"write": f"{DIR}/{RUN_FILE}", "content": "<details open>\n# heading\n"},
    ]
    path = tmp_path_factory.mktemp("hostile-run") / "steps.yml"
    path.write_text(json.dumps(steps))
    proc = subprocess.Popen(
        [FLUID, "run", "a hostile review", "--steps", str(path)]
        + ["--production", production_vm["name"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line.decode(errors="replace"))
            if seen[-1].startswith(RUN_ID_LINE):
                break
        assert seen and seen[-1].startswith(RUN_ID_LINE), "".join(seen)
        run_id = seen[-1].removeprefix(RUN_ID_LINE).strip()
        wait_waiting(run_id, attempt=1)
        yield proc, run_id
    finally:
        if proc.poll() is None:
            proc.kill()


def paused(run_id: str) -> bool:
    state = read_run(run_id).state
    return state is not None and state.is_paused()


def test_the_approval_form_names_the_digest_and_escapes_the_guest(
    waiting_run: tuple[subprocess.Popen, str], settings: FluidSettings
) -> None:
    """The pause is keyed by attempt and digest; its form accepts that digest only and its
    description shows the change without any element or heading the guest wrote."""
    _proc, run_id = waiting_run
    rec = runs.get(run_id)
    assert rec is not None and rec.digest
    state = read_run(run_id).state
    assert state is not None and state.state_details.pause_key == f"attempt-1-{rec.digest}"
    keyset = state.state_details.run_input_keyset
    assert keyset is not None
    schema = read_flow_run_input(keyset["schema"], flow_run_id=UUID(run_id))
    assert schema["properties"]["digest"]["const"] == rec.digest
    assert "digest" in schema["required"]
    description = read_flow_run_input(keyset["description"], flow_run_id=UUID(run_id))
    assert rec.digest in description
    assert not {t.type for t in md_tokens(description)} & HTML_TOKENS
    assert headings(description) == [f"Approve this change to {rec.production}?"]
    spans = [t.content for t in md_tokens(description) if t.type == "code_inline"]
    assert f"{DIR}/{RUN_FILE}" in spans

    # The playbook is sealed: a read-only copy in the run's private folder.
    sealed = settings.runs_dir / run_id / "attempt-1" / "playbook"
    assert digest(sealed) == rec.digest
    lint_playbook(sealed)
    assert (sealed.stat().st_mode & 0o777) == 0o500
    assert ((sealed / "site.yml").stat().st_mode & 0o777) == 0o400
    assert ((settings.runs_dir / run_id).stat().st_mode & 0o777) == 0o700
    # The whole change set is where the artifacts say it is.
    whole = settings.runs_dir / run_id / "attempt-1" / "changeset.json"
    assert RUN_FILE in whole.read_text() and (whole.stat().st_mode & 0o777) == 0o600


def test_a_decision_naming_another_digest_is_turned_away(
    waiting_run: tuple[subprocess.Popen, str],
) -> None:
    """Prefect's server refuses another digest against the stored form; `fluid approve`
    refuses a wrong --digest, and without a terminal asks for one, sending nothing."""
    _proc, run_id = waiting_run
    rec = runs.get(run_id)
    assert rec is not None and rec.digest
    wrong = "0" * 64
    with pytest.raises(RuntimeError, match="Cannot resume"):
        resume_flow_run(
            UUID(run_id), run_input={"decision": "approve", "digest": wrong, "approver": "m"}
        )
    assert paused(run_id)

    r = fluid("approve", run_id, "--digest", wrong, "--approver", "mallory", check=False)
    assert r.returncode == 1
    assert b"is not the digest of the playbook" in r.stderr and b"nothing was sent" in r.stderr
    # What the reviewer is asked about: the attempt, the change and the digest.
    assert b"attempt 1" in r.stdout and f"digest: {rec.digest}".encode() in r.stdout
    assert f"{DIR}/hello.txt".encode() in r.stdout

    # No terminal to ask on (stdin is not one) and no --digest.
    r = subprocess.run(
        [FLUID, "approve", run_id, "--approver", "mallory"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=300,
    )
    assert r.returncode == 1 and b"--digest" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr

    # On a terminal it asks; a reviewer who answers no sends nothing.
    status, seen = on_terminal([FLUID, "approve", run_id, "--approver", "mallory"], b"n\n")
    assert status == 1 and b"[y/N]" in seen and b"nothing was sent" in seen, seen
    assert rec.digest.encode() in seen

    assert paused(run_id)
    assert runs.decisions(run_id) == []


def test_a_playbook_swapped_during_the_wait_is_refused(
    waiting_run: tuple[subprocess.Popen, str], production_vm: dict, settings: FluidSettings
) -> None:
    """Someone rewrites the sealed playbook and its DIGEST while the run waits: `fluid
    approve` will not send an approval, and one sent anyway ends the run refused, nothing
    applied, the refusal recorded in the audit trail. `fluid run` printed no guest control."""
    proc, run_id = waiting_run
    rec = runs.get(run_id)
    assert rec is not None and rec.digest
    sealed = settings.runs_dir / run_id / "attempt-1" / "playbook"
    tasks_file = sealed / "roles" / "fluid_change" / "tasks" / "main.yml"
    for folder in (sealed, sealed / "roles", tasks_file.parent.parent, tasks_file.parent):
        folder.chmod(0o700)
    tasks_file.chmod(0o600)
    tasks_file.write_text(
        tasks_file.read_text()
        + "- name: sneaky\n  ansible.builtin.copy:\n    dest: /srv/sneaky\n    content: x\n"
    )
    (sealed / "DIGEST").chmod(0o600)
    (sealed / "DIGEST").write_text(digest(sealed) + "\n")

    r = fluid("approve", run_id, "--digest", rec.digest, "--approver", "carol", check=False)
    assert r.returncode == 1 and b"changed after it was proposed" in r.stderr, r.stderr
    assert paused(run_id)

    # The form's digest is right, so the server takes it; the run itself refuses.
    resume_flow_run(
        UUID(run_id), run_input={"decision": "approve", "digest": rec.digest, "approver": "carol"}
    )
    final = wait_final(run_id)
    assert final.state is not None and final.state.is_failed()
    assert "changed after it was shown for approval" in (final.state.message or "")
    name = production_vm["name"]
    assert on_production(name, f"test -e {DIR} || test -e /srv/sneaky").returncode == 1
    assert [(d.outcome, d.approver, d.digest) for d in runs.decisions(run_id)] == [
        ("refused", "carol", rec.digest)
    ]
    refusals = [a for a in audit.entries(run_id) if a.kind == "approval" and "refused" in a.summary]
    assert refusals and rec.digest in refusals[0].summary
    assert runs.applies(run_id) == []

    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:]
    # The agent's escape sequences reached the log as text, not as controls.
    assert b"\x1b" not in out and b"\x07" not in out
    assert b"\\x1b]0;pwned\\x07" in out
