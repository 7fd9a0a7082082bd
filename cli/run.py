"""`fluid run`, `fluid approve` and `fluid reject`: agent tasks as Prefect flow runs, and the
human decision a run waits on. These import Prefect, lazily (through flows/, after
`use_prefect()`), and only once the arguments are known to be good."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli.args import accept_exclusion_option, add_command, parse_labels
from cli.output import log
from cli.server import auth_path, use_prefect
from infra.errors import FluidError


def _run_url(run_id: object) -> str:
    """The run's UI page, from Prefect's own helper (PREFECT_UI_URL, else derived from
    PREFECT_API_URL; right on Prefect Cloud too)."""
    from prefect.utilities.urls import url_for

    return url_for("flow-run", obj_id=str(run_id)) or f"(flow run {run_id}: no UI URL known)"


def agent_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The `agent` flow parameter from --steps or --llm-*; FluidError on a bad combination."""
    import os

    from infra.agents.scripted import load_steps

    llm = args.llm_block or args.llm_base_url or args.llm_model
    if args.steps and llm:
        raise FluidError("give either --steps (scripted agent) or --llm-* (LLM agent), not both")
    if args.steps:
        # Read here, not on the worker: the file may only exist where the command runs.
        steps = load_steps(Path(args.steps))
        return {"kind": "scripted", "steps": [st.model_dump(exclude_defaults=True) for st in steps]}
    if args.llm_api_key_env and not os.environ.get(args.llm_api_key_env):
        var = args.llm_api_key_env
        raise FluidError(f"--llm-api-key-env {var}: the environment variable {var} is not set")
    if args.llm_block:
        if args.llm_base_url or args.llm_model:
            raise FluidError("--llm-block names a saved endpoint: leave out --llm-base-url/-model")
        return {"kind": "llm", "block": args.llm_block}
    if llm:
        if not (args.llm_base_url and args.llm_model):
            raise FluidError("an LLM agent needs both --llm-base-url URL and --llm-model NAME")
        return {"kind": "llm", "base_url": args.llm_base_url, "model": args.llm_model}
    raise FluidError(
        "say who does the work: --steps FILE (scripted), --llm-block NAME, or "
        "--llm-base-url URL --llm-model NAME [--llm-api-key-env VAR]"
    )


def _llm_key_secret(var: str) -> str:
    """Save the key in $VAR as a Prefect Secret block; flow parameters are stored in clear."""
    import hashlib
    import os

    from prefect.blocks.system import Secret

    key = os.environ.get(var)
    if not key:
        raise FluidError(f"--llm-api-key-env {var}: the environment variable {var} is not set")
    name = "fluid-llm-key-" + hashlib.sha256(key.encode()).hexdigest()[:12]
    Secret(value=key).save(name, overwrite=True)
    return name


def cmd_run(args: argparse.Namespace) -> int:
    """Submit the agent task as a flow run and follow it to the end; the run's exit code."""
    import os

    from infra.escaping import term_line

    agent = agent_from_args(args)
    asked = parse_labels(args.label) or {}
    if args.host:
        from infra.host.identity import check

        check(args.host)  # a malformed id fails before the control plane starts
    auto = args.auto_approve or os.environ.get("FLUID_AUTO_APPROVE", "") not in ("", "0")
    own_server = bool(os.environ.get("PREFECT_API_URL"))
    use_prefect()
    from blocks.loading import load_target
    from orchestration import client

    target = load_target(args.production)  # a wrong name fails here, before a run exists
    if agent["kind"] == "llm" and args.llm_api_key_env:
        agent["api_key_secret"] = _llm_key_secret(args.llm_api_key_env)
    params: dict[str, Any] = {
        "task": args.task,
        "production": args.production,
        "agent": agent,
        "auto_approve": auto,
    }
    if args.image:
        params["image"] = args.image
    if args.timeout:
        params["approval_timeout_s"] = args.timeout
    if args.guardrails:
        params["guardrails"] = args.guardrails
    if args.accept_exclusions:
        params["accept_exclusions"] = args.accept_exclusions
    # A host must reach the target (its labels) and meet what this run asks for.
    fr = client.submit(params, host=args.host, labels={**target.labels, **asked} or None)
    print(f"run id: {fr.id}", flush=True)
    print(f"UI: {_run_url(fr.id)}", flush=True)

    login = "" if own_server else f" (UI password: the string in {auth_path()})"

    def waiting(paused: Any) -> None:
        proposal = client.pause_proposal(paused)
        what = f" attempt {proposal[0]}, playbook digest {proposal[1]}" if proposal else ""
        print(
            f"\n>>> waiting for approval of{what}: open {_run_url(fr.id)}{login}\n"
            ">>> and choose Resume (in the run's menu), or run\n"
            f">>>   fluid approve {fr.id} [--comment TEXT]   (shows the change, asks)\n"
            f">>>   fluid reject {fr.id} --comment TEXT\n",
            flush=True,
        )

    try:
        final = client.follow(
            fr.id, print_line=lambda line: print(line, flush=True), on_waiting=waiting
        )
    except KeyboardInterrupt:
        log(f"fluid: stopped following; run {fr.id} goes on: {_run_url(fr.id)}")
        return 130
    code = client.exit_code(final)
    state = final.state
    message = term_line(state.message or "") if state else ""
    print(f"run {fr.id} ended {state.name if state else '?'}: {message}")
    return code


def _approver(args: argparse.Namespace) -> str:
    import getpass
    import os

    return args.approver or os.environ.get("FLUID_APPROVER") or getpass.getuser()


def _run_uuid(text: str) -> Any:
    from uuid import UUID

    try:
        return UUID(text)
    except ValueError:
        raise FluidError(
            f"{text!r} is not a run id (`fluid run` prints it: run id: UUID)"
        ) from None


def show_proposal(p: Any) -> None:
    """What `fluid approve` asks about: attempt, the change summary, playbook and digest."""
    from infra.escaping import term_line
    from infra.state.diff import terminal

    print(f"run {p.run_id} waits for approval of attempt {p.attempt}")
    if p.task is not None:
        print(f"task: {term_line(p.task)}")
        print(f"production: {term_line(p.production or '?')}")
    if p.changes is not None:
        whole = p.playbook_dir / "changeset.json"
        print(terminal(p.changes, diffs=False, limit=30, whole=str(whole)))
    else:
        print(
            f"(the playbook is not on this host: read the change in the UI, {_run_url(p.run_id)})"
        )
    print(f"playbook: {p.playbook_dir} (read-only)")
    print(f"digest: {p.digest}", flush=True)


def cmd_approve(args: argparse.Namespace) -> int:
    """Show the change a run waits on, confirm it (terminal or --digest), approve it."""
    use_prefect()
    from orchestration import client

    run_id = _run_uuid(args.run_id)
    proposal = client.waiting(run_id)
    show_proposal(proposal)
    if args.digest is not None:
        if args.digest.strip().lower() != proposal.digest:
            raise client.ProposalMismatch(
                f"--digest {args.digest} is not the digest of the playbook run {run_id} waits "
                f"on (attempt {proposal.attempt}, shown above): nothing was sent"
            )
    elif sys.stdin.isatty():
        answer = input(f"Apply this playbook to {proposal.production or 'production'}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            log("fluid: not approved; nothing was sent")
            return 1
    else:
        raise FluidError(
            "no terminal to confirm on: check the change and digest above, then pass "
            "--digest DIGEST to approve"
        )
    client.decide(run_id, "approve", _approver(args), args.comment or "", proposal.digest)
    print(f"approved attempt {proposal.attempt} of run {run_id} as {_approver(args)}")
    return 0


def cmd_reject(args: argparse.Namespace) -> int:
    """Reject the change a run waits on; the agent gets the comment."""
    use_prefect()
    from orchestration import client

    run_id = _run_uuid(args.run_id)
    # A rejection applies nothing: it needs no confirmation, whatever the playbook is now.
    proposal = client.waiting(run_id, verify=False)
    client.decide(run_id, "reject", _approver(args), args.comment, proposal.digest)
    print(
        f"rejected attempt {proposal.attempt} of run {run_id} as {_approver(args)}: {args.comment}"
    )
    return 0


RUN_ID = "0b6e3c1a-5d2f-4f57-9d1e-2f4a8c7b9e10"
DECISION_EXAMPLES = {
    "approve": (
        f'fluid approve {RUN_ID} --comment "ship it"',
        f"fluid approve {RUN_ID} --digest SHA256",
    ),
    "reject": (f'fluid reject {RUN_ID} --comment "use port 8080"',),
}


def register(top: argparse._SubParsersAction) -> None:
    """`fluid run`, `fluid approve` and `fluid reject`."""
    sp = add_command(
        top,
        "run",
        cmd_run,
        "run an agent task as a Prefect flow run",
        json_flag=False,
        examples=(
            'fluid run "install nginx" --steps examples/hello-nginx.yaml --production web',
            'fluid run "install nginx" --production web --llm-block local',
            'fluid run "install nginx" --production web --llm-base-url '
            "http://127.0.0.1:11434/v1 --llm-model qwen3",
        ),
    )
    sp.add_argument("task", help="what the agent should do, in words")
    sp.add_argument("--steps", help="YAML file of the scripted agent's steps")
    sp.add_argument("--llm-block", help="saved LLM endpoint block: an LLM agent does the work")
    sp.add_argument("--llm-base-url", help="OpenAI-compatible API URL, e.g. http://host:8000/v1")
    sp.add_argument("--llm-model", help="model name (with --llm-base-url)")
    sp.add_argument(
        "--llm-api-key-env",
        metavar="VAR",
        help="environment variable holding the API key (saved as a Prefect Secret block)",
    )
    sp.add_argument("--guardrails", help="Guardrails block name (default: fluid's defaults)")
    sp.add_argument("--production", required=True, help="ProductionTarget block name")
    sp.add_argument("--image", default=None, help="sandbox image name (default: FLUID_IMAGE)")
    sp.add_argument(
        "--host", default=None, help="run on this host (`fluid host list`); default: placed"
    )
    sp.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="place the run only on a host with this label, besides the production "
        "target's labels (repeatable), e.g. --label zone=a",
    )
    sp.add_argument("--timeout", type=int, default=None, help="approval timeout in seconds")
    sp.add_argument(
        "--auto-approve",
        action="store_true",
        help="apply without a human (also FLUID_AUTO_APPROVE=1); stored as automatic",
    )
    accept_exclusion_option(sp)
    for name, fn, help in (
        (
            "approve",
            cmd_approve,
            "show the change a run waits on and its digest, then approve it (asks on a "
            "terminal; --digest D confirms without one)",
        ),
        ("reject", cmd_reject, "reject a run; the agent gets the comment"),
    ):
        sp = add_command(top, name, fn, help, json_flag=False, examples=DECISION_EXAMPLES[name])
        sp.add_argument("run_id", help="the run id `fluid run` printed")
        sp.add_argument(
            "--comment",
            required=name == "reject",
            default=None,
            help="why: recorded with the decision"
            + ("; the agent reads it and tries again" if name == "reject" else ""),
        )
        sp.add_argument("--approver", default=None, help="your name (default: login name)")
        if name == "approve":
            sp.add_argument(
                "--digest",
                default=None,
                help="the playbook digest you approve (as shown); any other is refused",
            )
