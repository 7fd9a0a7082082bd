"""The `fluid` command line.

Sandbox and image commands call infra/ directly and never import Prefect, so they start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.errors import CommandTimeout, FluidError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _emit(args: argparse.Namespace, obj: Any, human: Callable[[], None]) -> None:
    """One JSON object on stdout with --json, else the human form."""
    if getattr(args, "json", False):
        if hasattr(obj, "model_dump"):
            obj = obj.model_dump(mode="json")
        print(json.dumps(obj, default=str))
    else:
        human()


# --- image -------------------------------------------------------------------------------


def cmd_image_build(args: argparse.Namespace) -> int:
    from infra import images

    m = images.build(args.name, force=args.force, progress=_log)
    _emit(args, m, lambda: print(f"{m.name} {m.version} {m.disk_path}"))
    return 0


def cmd_image_import(args: argparse.Namespace) -> int:
    from infra import images

    m = images.import_image(Path(args.path), args.name, progress=_log)
    _emit(args, m, lambda: print(f"{m.name} {m.version} {m.disk_path}"))
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    from infra import images

    found = images.list_images()

    def human() -> None:
        print(f"{'NAME':<16} {'VERSION':<8} {'SOURCE':<11} {'SIZE':>8}  BUILT")
        for m in found:
            print(
                f"{m.name:<16} {m.version:<8} {m.source:<11} "
                f"{m.size_bytes / 2**20:>6.0f}Mi  {m.built_at:%Y-%m-%d %H:%M}"
            )

    _emit(args, {"images": [m.model_dump(mode="json", exclude={"packages"}) for m in found]}, human)
    return 0


# --- pool (warm starts) -------------------------------------------------------------------


def cmd_pool_fill(args: argparse.Namespace) -> int:
    from infra import spares, warm_slots
    from infra.settings import get_settings

    made = warm_slots.fill(args.slots, image=args.image, progress=_log)
    slots = warm_slots.list_slots()
    # Spares are of the default image only: an unnamed create takes them.
    started = spares.fill(say=_log) if args.image in (None, get_settings().image) else []
    _emit(
        args,
        {
            "prepared": [m.name for m in made],
            "slots": [m.model_dump(mode="json") for m in slots],
            "spares_started": started,
        },
        lambda: print(
            f"{len(made)} slot(s) prepared; {len(slots)} ready for warm starts; "
            f"{len(started)} spare(s) started"
        ),
    )
    return 0


def cmd_pool_list(args: argparse.Namespace) -> int:
    from infra import spares, warm_slots

    slots = warm_slots.list_slots()
    waiting = spares.list_spares()

    def human() -> None:
        print(f"{'SLOT':<12} {'IMAGE':<16} {'MEMORY':>7} {'STATE':>8}  {'SAVED':<17} IN USE BY")
        for m in slots:
            print(
                f"{m.name:<12} {m.image + ' ' + m.image_version:<16} {m.memory_mib:>5}Mi "
                f"{m.state_bytes / 2**20:>6.0f}Mi  {m.saved_at:%Y-%m-%d %H:%M}  "
                f"{m.in_use_by or '-'}"
            )
        for r in waiting:
            print(f"spare {r.id} waiting in slot {r.slot} (expires {r.expires_at:%Y-%m-%d %H:%M})")

    _emit(
        args,
        {
            "slots": [m.model_dump(mode="json") for m in slots],
            "spares": [{"id": r.id, "slot": r.slot, "ssh_port": r.ssh_port} for r in waiting],
        },
        human,
    )
    return 0


def cmd_pool_clear(args: argparse.Namespace) -> int:
    from infra import spares, warm_slots

    stopped = spares.clear()  # first: each holds a slot
    removed = warm_slots.clear()
    _emit(
        args,
        {"removed": removed, "spares_stopped": stopped},
        lambda: print(f"stopped {len(stopped)} spare(s); removed {len(removed)} idle slot(s)"),
    )
    return 0


# --- sandbox -----------------------------------------------------------------------------


def cmd_sandbox_create(args: argparse.Namespace) -> int:
    from infra import sandboxes

    sb = sandboxes.create(
        args.name, image=args.image, network=args.network, agent_id=args.agent, progress=_log
    )
    _emit(
        args,
        sb,
        lambda: print(f"{sb.id} ready: ssh port {sb.ssh_port} (fluid sandbox ssh {sb.id})"),
    )
    return 0


def cmd_sandbox_list(args: argparse.Namespace) -> int:
    from infra import sandboxes

    listing = sandboxes.list_sandboxes()

    def human() -> None:
        print(f"{'ID':<20} {'STATE':<9} {'PORT':>5}  {'NETWORK':<8} {'IMAGE':<16} EXPIRES")
        for s in listing.sandboxes:
            print(
                f"{s.id:<20} {s.state:<9} {s.ssh_port:>5}  {s.network:<8} "
                f"{s.image + ' ' + s.image_version:<16} {s.expires_at:%Y-%m-%d %H:%M}"
            )
        for label, items in (
            ("domains without a record", listing.orphan_domains),
            ("records without a domain", listing.orphan_records),
            ("disks without a record", listing.orphan_disks),
        ):
            if items:
                print(f"orphans ({label}): {', '.join(items)}")

    _emit(args, listing, human)
    return 0


def cmd_sandbox_exec(args: argparse.Namespace) -> int:
    from infra import sandboxes

    return _exec(
        args, "fluid sandbox exec ID", lambda cmd: sandboxes.run(args.id, cmd, timeout=args.timeout)
    )


def _exec(args: argparse.Namespace, usage: str, run: Callable[[str], Any]) -> int:
    """The exec contract: output byte for byte, the command's exit status (124 on timeout)."""
    from infra.sandboxes import quote_command

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise FluidError(f"nothing to run: {usage} -- COMMAND...")
    try:
        r = run(quote_command(argv))
    except CommandTimeout as e:
        _pass_through(e.result)
        raise
    _pass_through(r)
    return r.exit_status if r.exit_status >= 0 else 255


def _pass_through(r: Any) -> None:
    from infra.escaping import term_bytes

    # Byte for byte into a pipe or file; a terminal gets no control sequence from the guest.
    for stream, data in ((sys.stdout, r.stdout), (sys.stderr, r.stderr)):
        stream.buffer.write(term_bytes(data) if stream.isatty() else data)
        stream.buffer.flush()
    if r.stdout_cut or r.stderr_cut:
        _log(
            f"fluid: output capped: {r.stdout_cut} bytes of stdout and {r.stderr_cut} bytes "
            "of stderr were cut from the middle"
        )


def cmd_sandbox_ssh(args: argparse.Namespace) -> int:
    import subprocess

    from infra import sandboxes

    remote = list(args.command)
    if remote and remote[0] == "--":
        remote = remote[1:]
    with tempfile.TemporaryDirectory(prefix="fluid-ssh-") as tmp:
        argv = sandboxes.ssh_argv(args.id, Path(tmp))
        return subprocess.call(argv + remote)


def cmd_attach(args: argparse.Namespace) -> int:
    import subprocess

    from infra import guest_shell

    # Not exec: the certificate's private key stays on disk only while ssh runs.
    with tempfile.TemporaryDirectory(prefix="fluid-attach-") as tmp:
        argv = guest_shell.attach_argv(args.sandbox, Path(tmp), read_write=args.rw)
        if sys.stdin.isatty():
            mode = "taking over (your keys go to the agent's shell)" if args.rw else "read-only"
            _log(f"fluid: attaching to the agent's shell in {args.sandbox}, {mode}; C-b d detaches")
        return subprocess.call(argv)


def cmd_sandbox_start(args: argparse.Namespace) -> int:
    from infra import sandboxes

    sb = sandboxes.start(args.id)
    _emit(args, sb, lambda: print(f"{sb.id} {sb.state}"))
    return 0


def cmd_sandbox_stop(args: argparse.Namespace) -> int:
    from infra import sandboxes

    sb = sandboxes.stop(args.id)
    _emit(args, sb, lambda: print(f"{sb.id} {sb.state}"))
    return 0


def cmd_sandbox_checkpoint(args: argparse.Namespace) -> int:
    from infra import checkpoints

    cp = checkpoints.create(args.id, args.name)
    _emit(args, cp, lambda: print(f"checkpoint {cp.name} of {cp.sandbox_id} created"))
    return 0


def cmd_sandbox_checkpoints(args: argparse.Namespace) -> int:
    from infra import checkpoints

    cps = checkpoints.list_checkpoints(args.id)

    def human() -> None:
        for cp in cps:
            print(f"{cp.name:<30} {cp.created_at:%Y-%m-%d %H:%M:%S}")

    _emit(args, {"checkpoints": [c.model_dump(mode="json") for c in cps]}, human)
    return 0


def cmd_sandbox_restore(args: argparse.Namespace) -> int:
    from infra import checkpoints

    checkpoints.restore(args.id, args.name)
    _emit(
        args,
        {"id": args.id, "restored": args.name},
        lambda: print(f"{args.id} restored to {args.name}"),
    )
    return 0


def cmd_sandbox_fork(args: argparse.Namespace) -> int:
    from infra import checkpoints

    sb = checkpoints.fork(args.id, args.name, args.new_name, progress=_log)
    _emit(
        args,
        sb,
        lambda: print(f"{sb.id} forked from {args.id}@{args.name}: ssh port {sb.ssh_port}"),
    )
    return 0


def cmd_sandbox_destroy(args: argparse.Namespace) -> int:
    from infra import sandboxes

    sandboxes.destroy(args.id)
    _emit(args, {"id": args.id, "destroyed": True}, lambda: print(f"{args.id} destroyed"))
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from infra import mcp_server
    from infra.settings import get_settings

    # A bad file is refused before anything is served.
    guardrails = mcp_server.load_guardrails(Path(args.guardrails)) if args.guardrails else None
    mcp_server.serve(args.sandbox, settings=get_settings(), guardrails=guardrails)
    return 0


# --- production: the persistent VM changes are applied to --------------------------------


def _save_production_block(vm: Any) -> bool:
    """Save the ProductionTarget block named after production VM `vm`; False when skipped.

    The only production code path that imports Prefect. ProductionBlockError (with how to
    retry) when saving fails; the VM is left as it is.
    """
    from infra.errors import ProductionBlockError

    try:
        from infra import control_plane
    except ModuleNotFoundError as e:
        if e.name != "infra.control_plane":
            raise
        _log(
            "fluid: note: infra.control_plane is not available, so no Prefect block was saved; "
            f"run `fluid production save-block {vm.name}` once it is"
        )
        return False
    try:
        control_plane.use_prefect(progress=_log)
        from blocks.production_target import ProductionTarget

        ProductionTarget.for_vm(vm).save(vm.name, overwrite=True)
    except Exception as e:  # Prefect raises many types (HTTP, validation, server start)
        raise ProductionBlockError(
            f"production VM {vm.name} is up (ssh port {vm.ssh_port}), but saving its Prefect "
            f"block production-target/{vm.name} failed: {type(e).__name__}: {e}. Fix that, "
            f"then run `fluid production save-block {vm.name}` (create would refuse: the VM "
            "exists)"
        ) from e
    return True


def cmd_production_create(args: argparse.Namespace) -> int:
    from infra import production

    vm = production.create(args.name, image=args.image, progress=_log)
    block_error: FluidError | None = None
    saved = False
    if not args.no_block:
        try:
            saved = _save_production_block(vm)
        except FluidError as e:
            block_error = e
    block = f"production-target/{vm.name}" if saved else None
    _emit(
        args,
        vm.model_dump(mode="json") | {"block": block},
        lambda: print(
            f"{vm.name} ready: ssh port {vm.ssh_port} (fluid production exec {vm.name} -- CMD)"
            + (f"; Prefect block {block}" if block else "")
        ),
    )
    if block_error is not None:
        raise block_error
    return 0


def cmd_production_save_block(args: argparse.Namespace) -> int:
    from infra import production

    vm = production.get(args.name)
    saved = _save_production_block(vm)
    block = f"production-target/{vm.name}" if saved else None
    _emit(
        args,
        {"name": vm.name, "block": block},
        lambda: print(f"saved Prefect block {block}" if block else "no block saved"),
    )
    return 0 if saved else 1


def cmd_production_list(args: argparse.Namespace) -> int:
    from infra import production

    listing = production.list_production()

    def human() -> None:
        print(f"{'NAME':<20} {'STATE':<9} {'PORT':>5}  {'IMAGE':<16} CREATED")
        for vm in listing.vms:
            print(
                f"{vm.name:<20} {vm.state:<9} {vm.ssh_port:>5}  "
                f"{vm.image + ' ' + vm.image_version:<16} {vm.created_at:%Y-%m-%d %H:%M}"
            )
        for label, items in (
            ("domains without a record", listing.orphan_domains),
            ("records without a domain", listing.orphan_records),
        ):
            if items:
                print(f"orphans ({label}): {', '.join(items)}")

    _emit(args, listing, human)
    return 0


def cmd_production_exec(args: argparse.Namespace) -> int:
    from infra import production

    return _exec(
        args,
        "fluid production exec NAME",
        lambda cmd: production.run(args.name, cmd, timeout=args.timeout),
    )


def cmd_production_start(args: argparse.Namespace) -> int:
    from infra import production

    vm = production.start(args.name, progress=_log)
    _emit(args, vm, lambda: print(f"{vm.name} {vm.state}"))
    return 0


def cmd_production_stop(args: argparse.Namespace) -> int:
    from infra import production

    vm = production.stop(args.name)
    _emit(args, vm, lambda: print(f"{vm.name} {vm.state}"))
    return 0


def cmd_production_destroy(args: argparse.Namespace) -> int:
    from infra import production

    production.destroy(args.name)
    # Deleting the block would import Prefect here; say how instead.
    _log(
        f"fluid: note: a Prefect block production-target/{args.name}, if one was saved, "
        f"stays; `prefect block delete production-target/{args.name}` removes it"
    )
    _emit(args, {"name": args.name, "destroyed": True}, lambda: print(f"{args.name} destroyed"))
    return 0


# --- change: diff, export, verify ---------------------------------------------------------


def _changeset(args: argparse.Namespace):
    from infra.state import capture
    from infra.state.diff import compare

    before = capture.load(args.sandbox, args.from_cp)
    after = capture.load(args.sandbox, args.to_cp)
    return compare(before, after)


def cmd_diff(args: argparse.Namespace) -> int:
    from infra.state.diff import markdown, terminal

    cs = _changeset(args)
    if args.json:
        print(cs.model_dump_json(indent=2))
    elif args.markdown:
        print(markdown(cs))
    else:
        print(terminal(cs, color=sys.stdout.isatty()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from infra.state.export import export

    out = export(_changeset(args), Path(args.out))
    digest = (out / "DIGEST").read_text().strip()
    _emit(
        args,
        {"out": str(out), "digest": digest},
        lambda: print(
            f"playbook written to {out} (digest {digest[:16]}…); run it with "
            f"ansible-playbook -i INVENTORY {out / 'site.yml'}"
        ),
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from infra.verification import verify

    report = verify(
        Path(args.dir),
        image=args.image,
        progress=_log,
        accept_exclusions=args.accept_exclusions or (),
    )
    _emit(args, report, lambda: _print_report(report))
    return 0 if report.passed else 1


def _print_report(report) -> None:
    import shlex

    from infra.escaping import term_line
    from infra.state.base import ChangeSet
    from infra.state.diff import terminal

    def line(c: Any) -> str:
        return f"{term_line(c.kind)} {term_line(c.key)}  # {term_line(c.exclusion())}"

    if report.excluded:
        print(
            f"FAILED: {len(report.excluded)} change(s) the playbook leaves out are not "
            "accepted; no replay was booted"
        )
        print("".join(f"  not accepted: {line(c)}\n" for c in report.excluded), end="")
        keys = " ".join(f"--accept-exclusion {shlex.quote(c.key)}" for c in report.excluded)
        print(f"to accept them (provisioned apart): fluid verify DIR {term_line(keys)}")
    else:
        print(term_line(report.summary()))
    for c in report.accepted:
        print(f"accepted exclusion: {line(c)}")
    for key in report.unmatched:
        print(f"ignored --accept-exclusion {term_line(key)}: no change left out has that key")
    if report.timings:
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items()))
    if report.residual:
        print(terminal(ChangeSet(changes=report.residual)))


# --- runs: agent tasks through Prefect -----------------------------------------------------


def _prefect(args: argparse.Namespace | None = None) -> None:
    """Point Prefect at fluid's API (starting the local server and worker if needed)."""
    from infra import control_plane

    control_plane.use_prefect(progress=_log)


def _run_url(run_id: object) -> str:
    import os

    from infra import control_plane

    ui = os.environ.get("PREFECT_UI_URL") or os.environ["PREFECT_API_URL"].removesuffix("/api")
    return control_plane.ControlPlane(
        api_url=os.environ["PREFECT_API_URL"], ui_url=ui, auth_string=""
    ).run_url(str(run_id))


def _agent_from_args(args: argparse.Namespace) -> dict[str, Any]:
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
    import os

    from infra.escaping import term_line

    agent = _agent_from_args(args)
    auto = args.auto_approve or os.environ.get("FLUID_AUTO_APPROVE", "") not in ("", "0")
    own_server = bool(os.environ.get("PREFECT_API_URL"))
    _prefect()
    from flows import client
    from flows.agent_task import load_target

    load_target(args.production)  # a wrong name fails here, before a run exists
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
    fr = client.submit(params)
    print(f"run id: {fr.id}", flush=True)
    print(f"UI: {_run_url(fr.id)}", flush=True)

    login = "" if own_server else f" (UI password: the string in {_auth_path()})"

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
        _log(f"fluid: stopped following; run {fr.id} goes on: {_run_url(fr.id)}")
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


def _show_proposal(p: Any) -> None:
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
    _prefect()
    from flows import client

    run_id = _run_uuid(args.run_id)
    proposal = client.waiting(run_id)
    _show_proposal(proposal)
    if args.digest is not None:
        if args.digest.strip().lower() != proposal.digest:
            raise client.ProposalMismatch(
                f"--digest {args.digest} is not the digest of the playbook run {run_id} waits "
                f"on (attempt {proposal.attempt}, shown above): nothing was sent"
            )
    elif sys.stdin.isatty():
        answer = input(f"Apply this playbook to {proposal.production or 'production'}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            _log("fluid: not approved; nothing was sent")
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
    _prefect()
    from flows import client

    run_id = _run_uuid(args.run_id)
    # A rejection applies nothing: it needs no confirmation, whatever the playbook is now.
    proposal = client.waiting(run_id, verify=False)
    client.decide(run_id, "reject", _approver(args), args.comment, proposal.digest)
    print(
        f"rejected attempt {proposal.attempt} of run {run_id} as {_approver(args)}: {args.comment}"
    )
    return 0


def cmd_server_start(args: argparse.Namespace) -> int:
    from infra import control_plane

    cp = control_plane.ensure_running(progress=_log)
    print(f"Prefect UI: {cp.ui_url} (password: the string in {_auth_path()})")
    return 0


def _auth_path() -> Path:
    from infra.settings import get_settings

    return get_settings().prefect_dir / "auth-string"


def cmd_server_stop(args: argparse.Namespace) -> int:
    from infra import control_plane

    control_plane.stop(progress=_log)
    return 0


def cmd_server_status(args: argparse.Namespace) -> int:
    from infra import control_plane

    st = control_plane.status()
    _emit(args, st, lambda: print("\n".join(f"{k}: {v}" for k, v in st.items())))
    return 0


def cmd_janitor(args: argparse.Namespace) -> int:
    _prefect()
    from flows.janitor import janitor

    report = janitor(grace_s=args.grace)
    _emit(
        args,
        report,
        lambda: print(
            "\n".join(
                [f"reaped {r.sandbox_id}: {r.reason}" for r in report.reaped]
                + [f"pruned {p.count} {p.what} ({p.bytes} bytes)" for p in report.pruned if p.count]
            )
            or "nothing to reap or prune"
        ),
    )
    return 1 if report.errors else 0


# --- audit -------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    """`fluid audit verify [--head H]` checks the chain; `fluid audit SUBJECT` prints records."""
    from infra import audit

    if args.subject == "verify":
        report = audit.verify(expected_head=args.head)

        def human() -> None:
            if report.ok:
                print(f"OK: {report.count} records, head {report.head or '(empty)'}")
            for p in report.problems:
                print(f"TAMPERED: {p}")
            for n in report.notes:
                print(f"NOTE: {n}")
            for a in report.advice:
                print(f"WHAT TO DO: {a}")

        _emit(args, report, human)
        return 0 if report.ok else 1
    if args.head is not None:
        raise FluidError("--head goes with `fluid audit verify`")
    records = audit.entries(args.subject)
    if not records and not _known_subject(args.subject):
        raise audit.AuditError(
            f"nothing is known about {args.subject!r}: no sandbox, run or audit record by that "
            "id (`fluid sandbox list` lists sandboxes; `fluid run` prints run ids)"
        )

    from infra.escaping import term_line

    def human() -> None:
        if not records:
            print(f"no audit records for {args.subject}")
        width = max((len(r.actor) for r in records), default=0)
        for r in records:
            print(
                f"{r.seq:>6}  {r.at:%Y-%m-%d %H:%M:%S}Z  {r.kind:<12}  "
                f"{term_line(r.actor):<{width}}  {term_line(r.summary)}"
            )

    _emit(args, {"records": [r.model_dump(mode="json") for r in records]}, human)
    return 0


def _known_subject(subject: str) -> bool:
    from infra import store

    with store.session() as s:
        return (
            s.get(store.SandboxRecord, subject) is not None
            or s.get(store.AgentRunRecord, subject) is not None
        )


# --- parser ------------------------------------------------------------------------------


def _accept_exclusion_option(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--accept-exclusion",
        dest="accept_exclusions",
        action="append",
        metavar="KEY",
        default=None,
        help="accept that the playbook leaves out the change with this key (a path, "
        "'user NAME'…; repeatable); the proof fails on any exclusion not accepted",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fluid", description=__doc__.splitlines()[0])
    top = p.add_subparsers(dest="group", required=True)

    def sub(
        parent: Any,
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help: str,
        json_flag: bool = True,
    ) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="one JSON object on stdout")
        return sp

    image = top.add_parser("image", help="golden images").add_subparsers(dest="cmd", required=True)
    sp = sub(image, "build", cmd_image_build, "build the golden image (cached by its inputs)")
    sp.add_argument("--name", default=None, help="image name (default: FLUID_IMAGE)")
    sp.add_argument("--force", action="store_true", help="rebuild even when up to date")
    sp = sub(image, "import", cmd_image_import, "register an existing qcow2 as an image")
    sp.add_argument("path")
    sp.add_argument("--name", required=True)
    sub(image, "list", cmd_image_list, "list image versions")

    pool = top.add_parser(
        "pool", help="warm starts: slots (saved booted VMs) and spare sandboxes"
    ).add_subparsers(dest="cmd", required=True)
    sp = sub(pool, "fill", cmd_pool_fill, "prepare slots and start spares (FLUID_SPARE_SANDBOXES)")
    sp.add_argument("slots", nargs="?", type=int, default=None, help="default FLUID_WARM_SLOTS")
    sp.add_argument("--image", default=None, help="image name (default: FLUID_IMAGE)")
    sub(pool, "list", cmd_pool_list, "list prepared slots, who holds them, and waiting spares")
    sub(pool, "clear", cmd_pool_clear, "stop the spares; remove every slot no sandbox holds")

    sandbox = top.add_parser("sandbox", help="sandbox VMs").add_subparsers(
        dest="cmd", required=True
    )
    sp = sub(sandbox, "create", cmd_sandbox_create, "create a sandbox and wait for SSH")
    sp.add_argument("--name", default=None)
    sp.add_argument("--image", default=None)
    sp.add_argument("--network", choices=["nat", "isolated"], default=None)
    sp.add_argument("--agent", default=None, help="agent id recorded with the sandbox")
    sub(sandbox, "list", cmd_sandbox_list, "list sandboxes and orphans")
    sp = sub(sandbox, "exec", cmd_sandbox_exec, "run a command as root", json_flag=False)
    sp.add_argument("id")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    sp.add_argument("command", nargs=argparse.REMAINDER)
    sp = sub(sandbox, "ssh", cmd_sandbox_ssh, "open an OpenSSH session", json_flag=False)
    sp.add_argument("id")
    sp.add_argument("command", nargs=argparse.REMAINDER)
    for name, fn, help in (
        ("start", cmd_sandbox_start, "start a stopped sandbox"),
        ("stop", cmd_sandbox_stop, "power a sandbox off"),
        ("checkpoints", cmd_sandbox_checkpoints, "list checkpoints"),
        ("destroy", cmd_sandbox_destroy, "destroy a sandbox"),
    ):
        sub(sandbox, name, fn, help).add_argument("id")
    for name, fn, help in (
        ("checkpoint", cmd_sandbox_checkpoint, "checkpoint disk and memory"),
        ("restore", cmd_sandbox_restore, "return to a checkpoint"),
    ):
        sp = sub(sandbox, name, fn, help)
        sp.add_argument("id")
        sp.add_argument("name")
    sp = sub(sandbox, "fork", cmd_sandbox_fork, "a new sandbox from a checkpoint")
    sp.add_argument("id")
    sp.add_argument("name", help="checkpoint to fork from")
    sp.add_argument("--name", dest="new_name", default=None, help="the new sandbox's name")

    sp = sub(
        top,
        "mcp",
        cmd_mcp,
        "serve a sandbox's agent tools over MCP on stdio (for an outside agent)",
        json_flag=False,
    )
    sp.add_argument("sandbox")
    sp.add_argument(
        "--guardrails", default=None, metavar="FILE", help="YAML or JSON file (default: built in)"
    )

    sp = sub(
        top,
        "attach",
        cmd_attach,
        "watch the agent's shell in a sandbox live (tmux over ssh; C-b d detaches)",
        json_flag=False,
    )
    sp.add_argument("sandbox")
    sp.add_argument(
        "--rw", action="store_true", help="take over: type into the agent's shell (default: watch)"
    )

    production = top.add_parser(
        "production", help="the persistent production VM changes are applied to"
    ).add_subparsers(dest="cmd", required=True)
    sp = sub(
        production,
        "create",
        cmd_production_create,
        "create a production VM (a full copy of an image) and save its Prefect block",
    )
    sp.add_argument("name")
    sp.add_argument("--image", default=None)
    sp.add_argument(
        "--no-block",
        action="store_true",
        help="do not save the ProductionTarget block (later: fluid production save-block NAME)",
    )
    sp = sub(production, "exec", cmd_production_exec, "run a command as root", json_flag=False)
    sp.add_argument("name")
    sp.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    sp.add_argument("command", nargs=argparse.REMAINDER)
    sub(production, "list", cmd_production_list, "list production VMs and orphans")
    for name, fn, help in (
        ("save-block", cmd_production_save_block, "save (again) its ProductionTarget block"),
        ("start", cmd_production_start, "start a stopped production VM, wait for SSH"),
        ("stop", cmd_production_stop, "power a production VM off"),
        ("destroy", cmd_production_destroy, "destroy a production VM and its disk"),
    ):
        sub(production, name, fn, help).add_argument("name")

    sp = sub(top, "diff", cmd_diff, "what changed in a sandbox between two checkpoints")
    sp.add_argument("sandbox")
    sp.add_argument("--from", dest="from_cp", required=True, help="checkpoint name")
    sp.add_argument("--to", dest="to_cp", required=True, help="checkpoint name")
    sp.add_argument("--markdown", action="store_true")
    sp = sub(top, "export", cmd_export, "export a change as an Ansible playbook directory")
    sp.add_argument("sandbox")
    sp.add_argument("--from", dest="from_cp", required=True)
    sp.add_argument("--to", dest="to_cp", required=True)
    sp.add_argument("--out", required=True, help="new directory for the playbook")
    sp = sub(top, "verify", cmd_verify, "replay a playbook on a fresh sandbox and compare")
    sp.add_argument("dir")
    sp.add_argument("--image", default=None, help="image name (default: the one recorded)")
    _accept_exclusion_option(sp)

    sp = sub(top, "run", cmd_run, "run an agent task as a Prefect flow run", json_flag=False)
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
    sp.add_argument("--image", default=None)
    sp.add_argument("--timeout", type=int, default=None, help="approval timeout in seconds")
    sp.add_argument(
        "--auto-approve",
        action="store_true",
        help="apply without a human (also FLUID_AUTO_APPROVE=1); stored as automatic",
    )
    _accept_exclusion_option(sp)
    for name, fn, help in (
        (
            "approve",
            cmd_approve,
            "show the change a run waits on and its digest, then approve it (asks on a "
            "terminal; --digest D confirms without one)",
        ),
        ("reject", cmd_reject, "reject a run; the agent gets the comment"),
    ):
        sp = sub(top, name, fn, help, json_flag=False)
        sp.add_argument("run_id")
        sp.add_argument("--comment", required=name == "reject", default=None)
        sp.add_argument("--approver", default=None, help="your name (default: login name)")
        if name == "approve":
            sp.add_argument(
                "--digest",
                default=None,
                help="the playbook digest you approve (as shown); any other is refused",
            )
    server = top.add_parser("server", help="the local Prefect server and worker").add_subparsers(
        dest="cmd", required=True
    )
    sub(server, "start", cmd_server_start, "start server, worker and deployments", False)
    sub(server, "stop", cmd_server_stop, "stop the local worker and server", False)
    sub(server, "status", cmd_server_status, "is the local server up?")
    sp = sub(
        top,
        "audit",
        cmd_audit,
        "print the audit trail of a sandbox or run; `fluid audit verify` checks the keyed chain "
        "and the decisions and applies tables against it",
    )
    sp.add_argument("subject", metavar="SANDBOX_OR_RUN|verify")
    sp.add_argument("--head", default=None, help="verify: this published head must be in the chain")
    sp = sub(top, "janitor", cmd_janitor, "reap expired and orphaned sandboxes now")
    sp.add_argument("--grace", type=int, default=600, help="minimum age of orphans, seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fluid` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except CommandTimeout as e:
        _log(f"fluid: error: {e}")
        return 124
    except FluidError as e:
        _log(f"fluid: error: {e}")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
