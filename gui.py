"""Start the studio's GUI: `python gui.py [--host 127.0.0.1] [--port 7860] [--auth-file FILE] ...`."""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
AUTH_ENV = "SD_STUDIO_AUTH"  # the login as user:password, kept out of the process list


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


def login_from(auth_file: str | None, env_value: str) -> tuple[str, str] | None:
    """The login from --auth-file (its first line) or else the AUTH_ENV variable; None when neither is given."""
    if auth_file:
        with open(auth_file, encoding="utf-8-sig") as f:
            where, value = f"--auth-file {auth_file}: its first line", f.readline()
    elif env_value.strip():
        where, value = AUTH_ENV, env_value
    else:
        return None
    try:
        return parse_auth(value.strip())
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{where} must be user:password") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SD Studio: prepare datasets and fine-tune Stable Diffusion.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this computer only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--auth", type=parse_auth, metavar="USER:PASS",
                        help="require this login; needed to listen on other addresses or to share (other users "
                             f"of this computer can see it in the process list: prefer --auth-file or {AUTH_ENV})")
    parser.add_argument("--auth-file", metavar="FILE", help="read the login USER:PASS from the first line of FILE")
    parser.add_argument("--share", action="store_true", help="make a public gradio.live link (needs --auth)")
    parser.add_argument("--inbrowser", action="store_true", help="open the GUI in the browser")
    args = parser.parse_args(argv)
    try:
        args.auth = args.auth or login_from(args.auth_file, os.environ.get(AUTH_ENV, ""))
    except (OSError, argparse.ArgumentTypeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if (args.share or not is_loopback(args.host)) and not args.auth:
        where = "a public share link" if args.share else f"address {args.host}"
        parser.exit(2, f"error: refusing to serve on {where} without a login: anyone who can reach it could read "
                       f"your files and run jobs. Add a login (--auth-file FILE, the {AUTH_ENV} variable or --auth "
                       "USER:PASS), or use --host 127.0.0.1.\n")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from core.fsutil import REPO_ROOT
    from core.queue.runner import resume_queue
    from core.torch_check import start_torch_check
    from tabs.app import build_app
    from tabs.assets import launch_assets

    os.chdir(REPO_ROOT)  # jobs run from here too, so relative paths mean the same in both
    app = build_app()
    # _frontend=False: no self-check HEAD / after the start; gradio gives up on it after 3 s without an answer
    # and aborts ("localhost is not accessible"), which a busy machine reaches while the server is fine.
    app.launch(server_name=args.host, server_port=args.port, auth=args.auth, share=args.share,
               inbrowser=args.inbrowser, ssr_mode=False, footer_links=["settings"], quiet=True,
               prevent_thread_lock=True, _frontend=False, **launch_assets())
    print(f"SD Studio is running at {app.local_url}" + (f" (public link: {app.share_url})" if app.share_url else "")
          + "\nPress Ctrl+C to quit; running jobs go on and the GUI reattaches to them next time.", flush=True)
    start_torch_check()  # logs the PyTorch build and warns when it cannot use the NVIDIA GPU; serves meanwhile
    resume_queue()  # the job queue goes on where it was (its runner may have ended with the computer)
    app.block_thread()


if __name__ == "__main__":
    sys.exit(main())
