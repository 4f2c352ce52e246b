"""``tessera-vz serve``: the map viewer of an index (and its HTTP API), until Ctrl-C."""

from __future__ import annotations

import argparse

from tessera_vz.commands.common import check_versions, err, open_index
from tessera_vz.core.errors import ConfigurationError


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the map viewer (``tessera_vz.serve``) over an index until Ctrl-C."""
    try:
        import uvicorn

        from tessera_vz.serve import Limits, create_app
    except ImportError as exc:
        raise ConfigurationError(
            f"`tessera-vz serve` needs the serve extra ({exc.name} is missing): "
            "pip install 'tessera-vz[serve]'"
        ) from None
    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be 0-65535, got {args.port}")
    for flag, value in (("--max-preview-pixels", args.max_preview_pixels),
                        ("--max-region-pixels", args.max_region_pixels)):  # fmt: skip
        if value < 1:
            raise ConfigurationError(f"{flag} must be at least 1, got {value}")
    store = open_index(args, args.store)
    check_versions(store)
    limits = Limits(preview_pixels=args.max_preview_pixels, region_pixels=args.max_region_pixels)
    app = create_app(store, limits=limits, basemap=args.basemap, host=args.host)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning[/yellow] serving on {args.host}: anyone who reaches it can "
                  "read the index's data through this server")  # fmt: skip
    err.print(
        f"tessera-vz viewer of {args.store}: http://{args.host}:{args.port}/ (Ctrl-C stops)",
        markup=False,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
