"""Start the studio's GUI: `python gui.py [--host 127.0.0.1] [--port 7860] [--auth user:pass] ...`."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected user:password")
    return user, password


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SD Studio: prepare datasets and fine-tune Stable Diffusion.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", type=parse_auth, metavar="USER:PASS",
                        help="require this login; needed to listen on other addresses or to share")
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (needs --auth)")
    parser.add_argument("--inbrowser", action="store_true", help="open the GUI in the browser")
    args = parser.parse_args(argv)
    if (args.share or not is_loopback(args.host)) and not args.auth:
        where = "a public share link" if args.share else f"address {args.host}"
        parser.exit(2, f"error: refusing to serve on {where} without a login: anyone who can reach it "
                       f"could read your files and run jobs. Add --auth USER:PASS, or use --host 127.0.0.1.\n")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from core.fsutil import REPO_ROOT
    from tabs.app import build_app

    os.chdir(REPO_ROOT)  # jobs run from here too, so relative paths mean the same in both
    app = build_app()
    app.launch(server_name=args.host, server_port=args.port, auth=args.auth, share=args.share,
               inbrowser=args.inbrowser, ssr_mode=False, footer_links=["settings"], quiet=True,
               prevent_thread_lock=True)
    print(f"SD Studio is running at {app.local_url}" + (f" (public link: {app.share_url})" if app.share_url else "")
          + "\nPress Ctrl+C to quit; running jobs go on and the GUI reattaches to them next time.", flush=True)
    app.block_thread()


if __name__ == "__main__":
    sys.exit(main())
