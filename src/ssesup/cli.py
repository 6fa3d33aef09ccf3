"""The ``ssesup`` command: ``ssesup demo`` and ``ssesup drain URL --token ...``.

Does not own the demo app (``ssesup.demo``) or any server behaviour: it hands over to uvicorn.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssesup", description="Supervised Server-Sent Events.")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="serve the embedded demo app (try: curl -N HOST:PORT/ticks)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)

    drain = commands.add_parser("drain", help="drain a server through its drain endpoint and wait until done")
    drain.add_argument("url", help="the drain endpoint, e.g. http://127.0.0.1:8000/ops/drain/")
    drain.add_argument("--token", default=os.environ.get("SSESUP_DRAIN_TOKEN"), help="or $SSESUP_DRAIN_TOKEN")
    drain.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the drain (default 120)")

    args = parser.parse_args(argv)
    if args.command == "demo":
        return run_demo(args.host, args.port)
    if not args.token:
        parser.error("drain needs --token or $SSESUP_DRAIN_TOKEN")
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
        print(f"drain refused: HTTP {error.code}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        print(f"drain failed: {error}", file=sys.stderr)
        return 1
    print(f"drained in {report.get('duration')} s: {report}")
    return 0 if report.get("done") else 1


def run_demo(host: str, port: int) -> int:
    try:
        import uvicorn
    except ImportError:
        print("the demo needs uvicorn: pip install 'ssesup[uvicorn]'", file=sys.stderr)
        return 1
    print(f"ssesup demo: curl -N http://{host}:{port}/ticks", file=sys.stderr)
    uvicorn.run("ssesup.demo:app", host=host, port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
