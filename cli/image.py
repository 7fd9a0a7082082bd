"""`fluid image`: golden images. Calls infra/ directly and never imports Prefect."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from cli.args import add_command, add_noun
from cli.output import emit, log, print_table

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
    """List image versions."""
    from infra.host import images

    found = images.list_images()

    def human() -> None:
        print_table(
            "{:<16} {:<8} {:<11} {:>8}  {}",
            ("NAME", "VERSION", "SOURCE", "SIZE", "BUILT"),
            (
                (
                    m.name,
                    m.version,
                    m.source,
                    f"{m.size_bytes / 2**20:.0f}Mi",
                    f"{m.built_at:%Y-%m-%d %H:%M}",
                )
                for m in found
            ),
        )

    emit(args, {"images": [m.model_dump(mode="json", exclude={"packages"}) for m in found]}, human)
    return 0


def register(top: argparse._SubParsersAction) -> None:
    """`fluid image build|import|list`."""
    image = add_noun(top, "image", "golden images")
    sp = add_command(
        image, "build", cmd_image_build, "build the golden image (cached by its inputs)"
    )
    sp.add_argument("--name", default=None, help="image name (default: FLUID_IMAGE)")
    sp.add_argument("--force", action="store_true", help="rebuild even when up to date")
    sp = add_command(image, "import", cmd_image_import, "register an existing qcow2 as an image")
    sp.add_argument("path")
    sp.add_argument("--name", required=True)
    add_command(image, "list", cmd_image_list, "list image versions")
