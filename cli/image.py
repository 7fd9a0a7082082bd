"""`fluid image`: golden images. Calls infra/ directly and never imports Prefect."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cli.args import add_command, add_noun
from cli.output import emit, emit_line, log, print_table

if TYPE_CHECKING:
    from infra.host.images import ImageManifest


def emit_manifest(args: argparse.Namespace, m: ImageManifest) -> None:
    """A built or imported image: its manifest with --json, else its name, version and disk."""
    emit(args, m, lambda: print(f"{m.name} {m.version} {m.disk_path}"))


def cmd_image_build(args: argparse.Namespace) -> int:
    """Build the golden image (cached by its inputs)."""
    from infra.host import images

    emit_manifest(args, images.build(args.name, force=args.force, progress=log))
    return 0


def cmd_image_import(args: argparse.Namespace) -> int:
    """Register an existing qcow2 as an image."""
    from infra.host import images

    emit_manifest(args, images.import_image(Path(args.path), args.name, progress=log))
    return 0


def cmd_image_list(args: argparse.Namespace) -> int:
    """List image versions: this host's, or with --cluster the catalog's and who holds them."""
    if args.cluster:
        return _list_cluster(args)
    from infra.host import images

    found = images.list_images()

    def human() -> None:
        print_table(
            "{:<16} {:<16} {:<16} {:<12} {:<11} {:>8}  {}",
            ("NAME", "VERSION", "GLOBAL", "SHA256", "SOURCE", "SIZE", "BUILT"),
            (
                (
                    m.name,
                    m.version,
                    m.content_version or "-",
                    m.sha256[:12],
                    m.source,
                    f"{m.size_bytes / 2**20:.0f}Mi",
                    f"{m.built_at:%Y-%m-%d %H:%M}",
                )
                for m in found
            ),
        )

    emit(args, {"images": [m.model_dump(mode="json", exclude={"packages"}) for m in found]}, human)
    return 0


def _list_cluster(args: argparse.Namespace) -> int:
    from infra.records import image_catalog

    published = image_catalog.entries()
    copies = image_catalog.held()
    rows = [
        {
            "name": e.name,
            "version": e.version,
            "origin_version": e.origin_version,
            "published_by": e.published_by,
            "published_at": e.published_at.isoformat(),
            "parts": [p.model_dump() for p in e.parts],
            "hosts": [c.host for c in copies if (c.name, c.version) == (e.name, e.version)],
        }
        for e in published
    ]

    def human() -> None:
        print_table(
            "{:<16} {:<16} {:<24} {:<16}  {}",
            ("NAME", "GLOBAL", "PUBLISHED BY", "PUBLISHED", "HELD BY"),
            (
                (
                    r["name"],
                    r["version"],
                    f"{r['published_by']} ({r['origin_version']})",
                    r["published_at"][:16].replace("T", " "),
                    ", ".join(r["hosts"]) or "-",
                )
                for r in rows
            ),
        )

    emit(args, {"images": rows}, human)
    return 0


def cmd_image_publish(args: argparse.Namespace) -> int:
    """Publish a local image version to the cluster's catalog under its content address."""
    from infra.host import image_sync

    entry = image_sync.publish(args.name, args.version)
    emit_line(
        args,
        entry,
        f"{entry.name} {entry.version} published from {entry.published_by} "
        f"({entry.origin_version}, {len(entry.parts)} parts)",
    )
    return 0


def cmd_image_sync(args: argparse.Namespace) -> int:
    """Copy a published image here from DIR, verified before it can be used."""
    from infra.host import image_sync

    done = image_sync.sync(args.name, args.version, source=Path(args.source), progress=log)
    state = "copied and verified" if done.copied else "already here"
    emit_line(args, done, f"{done.name} {done.version} {state}: {done.directory}")
    return 0


def cmd_image_verify(args: argparse.Namespace) -> int:
    """Re-hash this host's copy of an image; a copy that differs is quarantined."""
    from infra.host import image_sync

    m = image_sync.verify(args.name, args.version)
    emit_line(
        args,
        m.model_dump(mode="json", exclude={"packages"}),
        f"{m.name} {m.version} verified: {m.directory}",
    )
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid image build|import|list|publish|sync|verify`."""
    image = add_noun(
        top,
        "image",
        "golden images",
        examples=(
            "fluid image build",
            "fluid image list",
            "fluid image import ./my.qcow2 --name my-image",
            "fluid image publish",
            "fluid image list --cluster",
        ),
    )
    sp = add_command(
        image, "build", cmd_image_build, "build the golden image (cached by its inputs)"
    )
    sp.add_argument("--name", default=None, help="image name (default: FLUID_IMAGE)")
    sp.add_argument("--force", action="store_true", help="rebuild even when up to date")
    sp = add_command(image, "import", cmd_image_import, "register an existing qcow2 as an image")
    sp.add_argument("path", help="the qcow2 file (copied; the original is left alone)")
    sp.add_argument("--name", required=True, help="the image's name (`--image NAME` elsewhere)")
    sp = add_command(image, "list", cmd_image_list, "list image versions")
    sp.add_argument(
        "--cluster",
        action="store_true",
        help="list the cluster's published images and the hosts holding each instead",
    )
    sp = add_command(
        image,
        "publish",
        cmd_image_publish,
        "publish a local image version to the cluster's catalog (its global version)",
    )
    sp.add_argument("name", nargs="?", default=None, help="image name (default: FLUID_IMAGE)")
    sp.add_argument("--version", default=None, help="local or global version (default: newest)")
    sp = add_command(
        image,
        "sync",
        cmd_image_sync,
        "copy a published image to this host, verified part by part before use",
    )
    sp.add_argument("name", help="image name")
    sp.add_argument("--version", default=None, help="global version (default: newest published)")
    sp.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="DIR",
        help="the publishing host's image folder as this host sees it (a mount)",
    )
    sp = add_command(
        image, "verify", cmd_image_verify, "re-hash this host's copy of an image before use"
    )
    sp.add_argument("name", help="image name")
    sp.add_argument("--version", default=None, help="local or global version (default: newest)")
