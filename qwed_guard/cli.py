"""The `qwed-guard` command: demo, sim, audit and policy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["main"]


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate must be in [0, 1], got {value:g}")
    return value


_RATE_FLAGS = ("error_5xx", "rate_limit", "quota", "unauthorized", "wrong_answer", "unevaluable")


def _add_rate_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulator faults on top of the profile")
    for name in _RATE_FLAGS:
        flag = f"--{name.replace('_', '-')}"
        group.add_argument(flag, dest=name, type=_rate, default=None, metavar="RATE")
    group.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any simulator option, e.g. --set latency=0.2 --set outage_after_requests=50",
    )


def _rates(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in _RATE_FLAGS if getattr(args, name) is not None}


def _demo(args: argparse.Namespace) -> int:
    from qwed_guard.demo import DemoError, print_summary, run_demo

    options = _sim_options(args, "demo")
    if options is None:
        return 2
    server = None
    if args.metrics is not None:
        try:
            server = _serve_metrics(args.metrics)
        except (OSError, ValueError) as exc:
            print(f"qwed-guard demo: error: --metrics {args.metrics}: {exc}", file=sys.stderr)
            return 2
    try:
        summary = run_demo(
            client=args.client,
            n=args.n,
            profile=args.profile,
            seed=args.seed,
            concurrency=args.concurrency,
            base_url=args.base_url,
            model=args.model,
            api_key_env=args.api_key_env,
            rates=options,
            audit_path=args.audit,
            pace=args.pace,
            progress=sys.stderr.isatty(),
            show_policy=print,
        )
    except DemoError as exc:
        print(f"qwed-guard demo: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.close()
    where = args.base_url or f"simulator, profile {args.profile}, seed {args.seed}"
    if args.client == "hosted":
        where = f"hosted, {where}"
    print_summary(summary, f"qwed-guard demo: {summary.calls} questions ({where})")
    return 0


def _sim_options(args: argparse.Namespace, command: str) -> dict[str, Any] | None:
    from qwed_guard.sim import parse_sim_options

    try:
        return {**_rates(args), **parse_sim_options(args.set)}
    except ValueError as exc:
        print(f"qwed-guard {command}: error: {exc}", file=sys.stderr)
        return None


def _sim(args: argparse.Namespace) -> int:
    from qwed_guard.sim import run_sim_cli

    options = _sim_options(args, "sim")
    if options is None:
        return 2
    return run_sim_cli(args.port, args.profile, args.seed, duration=args.duration, **options)


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line and exit 2, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _serve_metrics(port: int) -> Any:
    """Count the demo's calls into prometheus-client's registry and serve them on `port`."""
    import qwed_guard.metrics as metrics

    metrics.enable()
    server = metrics.serve(port)
    print(f"qwed-guard demo: Prometheus metrics at {server.url}", file=sys.stderr, flush=True)
    return server


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qwed-guard", description="Retry, fallback, alerts and audit around QWED."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    demo = commands.add_parser("demo", help="run the production stack on the embedded simulator")
    demo.add_argument(
        "--client",
        choices=("local", "hosted"),
        default="local",
        help="local: QWEDLocal on the LLM (default); hosted: QWEDClient on QWED's own API "
        "server, started here with the simulator as its LLM (no --base-url)",
    )
    demo.add_argument("--n", type=int, default=200, help="questions to verify (default 200)")
    demo.add_argument("--profile", default="flaky", help="simulator profile (default flaky)")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--concurrency", type=int, default=8, help="worker threads (default 8)")
    demo.add_argument("--base-url", help="a real OpenAI-compatible endpoint instead of the sim")
    demo.add_argument("--model", help="model name at --base-url")
    demo.add_argument(
        "--api-key-env", help="environment variable holding the endpoint's API key (never a flag)"
    )
    demo.add_argument(
        "--pace",
        type=float,
        default=None,
        metavar="SECONDS",
        help="spread the calls over this many seconds (default: 16 for --profile outage, else 0)",
    )
    demo.add_argument(
        "--audit",
        default="qwed-guard-demo.audit.jsonl",
        metavar="PATH",
        help="the audit trail to append to (default qwed-guard-demo.audit.jsonl)",
    )
    demo.add_argument(
        "--metrics",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics of the run on 127.0.0.1:PORT while it runs "
        "(needs prometheus-client; --pace stretches the run)",
    )
    _add_rate_flags(demo)
    demo.set_defaults(run=_demo)

    sim = commands.add_parser("sim", help="serve the OpenAI-compatible simulator")
    sim.add_argument("--port", type=int, default=8000)
    sim.add_argument("--profile", default="healthy")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    _add_rate_flags(sim)
    sim.set_defaults(run=_sim)

    from qwed_guard.alerts.cli import register as register_alerts
    from qwed_guard.audit.cli import register as register_audit
    from qwed_guard.policy.cli import register as register_policy

    register_audit(commands)
    register_policy(commands)
    register_alerts(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
