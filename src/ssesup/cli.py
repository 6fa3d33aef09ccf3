"""The ``ssesup`` command: ``ssesup --version``, ``ssesup demo`` and ``ssesup drain URL --token ...``.

Owns: parsing the command line, the demo's drain token (``$SSESUP_DRAIN_TOKEN`` or a new random one)
and what the demo prints when it starts. Does not own the demo app (``ssesup.demo``) or any server
behaviour: it hands over to uvicorn.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from ssesup import __version__
    from ssesup.demo import DRAIN_TOKEN_ENV

    parser = argparse.ArgumentParser(prog="ssesup", description="Supervised Server-Sent Events.")
    parser.add_argument("--version", action="version", version=f"ssesup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo",
        help="serve the embedded demo app (open http://HOST:PORT/ in a browser, or curl -N HOST:PORT/ticks)",
        description="Serve the embedded demo app with uvicorn. Its drain token is $SSESUP_DRAIN_TOKEN\n"
        "(16 characters or more) or a new random one; it is printed at start.",
        epilog=endpoint_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)

    drain = commands.add_parser("drain", help="drain a server through its drain endpoint and wait until done")
    drain.add_argument("url", help="the drain endpoint, e.g. http://127.0.0.1:8000/drain (the demo's)")
    drain.add_argument("--token", default=os.environ.get(DRAIN_TOKEN_ENV), help=f"or ${DRAIN_TOKEN_ENV}")
    drain.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the drain (default 120)")

    args = parser.parse_args(argv)
    if args.command == "demo":
        token = os.environ.get(DRAIN_TOKEN_ENV) or secrets.token_hex(24)  # hex: never a leading '-'
        if len(token) < 16:
            parser.error(f"${DRAIN_TOKEN_ENV} must be at least 16 characters")
        return run_demo(args.host, args.port, token)
    if not args.token:
        parser.error(f"drain needs --token or ${DRAIN_TOKEN_ENV}")
    return run_drain(args.url, args.token, args.timeout)


def run_drain(url: str, token: str, timeout: float) -> int:
    """POST to the drain endpoint with ``?wait=1``; it answers when every stream has closed."""
    separator = "&" if urllib.parse.urlsplit(url).query else "?"
    request = urllib.request.Request(
        f"{url}{separator}wait=1", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            report = json.load(response)
    except urllib.error.HTTPError as error:
        if error.code == 429:
            retry_after = error.headers.get("Retry-After")
            print(f"drain refused: HTTP 429, retry after {retry_after} s (too many wrong tokens)", file=sys.stderr)
        else:
            print(f"drain refused: HTTP {error.code}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        print(f"drain failed: {error}", file=sys.stderr)
        return 1
    print(f"drained in {report.get('duration')} s: {report}")
    return 0 if report.get("done") else 1


def endpoint_list(base: str = "") -> str:
    """The demo's endpoints, one a line, each with what it does (``base``: the server's URL)."""
    from ssesup.demo import ENDPOINTS

    width = max(len(base + path) for path, _ in ENDPOINTS)
    lines = [f"  {base + path:<{width}}  {what}" for path, what in ENDPOINTS]
    return "endpoints:\n" + "\n".join(lines)


def run_demo(host: str, port: int, drain_token: str) -> int:
    try:
        import uvicorn
    except ImportError:
        print("the demo needs uvicorn: pip install 'ssesup[uvicorn]'", file=sys.stderr)
        return 1
    from ssesup.demo import build_app

    base = f"http://{host}:{port}"
    print(f"ssesup demo on {base}: open {base}/ in a browser, or curl -N {base}/ticks", flush=True)
    print(endpoint_list(base), flush=True)
    print(f"drain token: {drain_token}", flush=True)
    # ``--token=`` keeps a token of the environment that begins with '-' from reading as an option.
    token_option = f"--token={drain_token}" if drain_token.startswith("-") else f"--token {drain_token}"
    print(f"drain it:    ssesup drain {base}/drain {token_option}", flush=True)
    uvicorn.run(build_app(drain_token), host=host, port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
