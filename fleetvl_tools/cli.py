"""``fleetvl`` command line: thin argument parsing that calls into the tiers.

Heavy imports (torch, transformers, onnxruntime) happen inside the sub-command that needs
them, so ``fleetvl --help`` is instant and the edge box never imports torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from fleetvl.errors import FleetVLError

if TYPE_CHECKING:
    from fleetvl_tools.launch.config import UpConfig

_Config = TypeVar("_Config")

__all__ = ["main"]


def _cmd_model_init(args: argparse.Namespace) -> int:
    from fleetvl_tools.checkpoint import build_checkpoint
    from fleetvl_tools.presets import get_preset

    preset = get_preset(args.preset, args.family)
    dtype = args.dtype or ("bfloat16" if preset.name == "edge-bench" else "float32")
    build_checkpoint(preset, args.out_dir, seed=args.seed, dtype=dtype, progress=print)
    return 0


def _cmd_model_export(args: argparse.Namespace) -> int:
    from edge_agent.export.bundle import export_bundle

    export_bundle(
        args.hf_dir,
        args.out_dir,
        args.precision,
        accuracy_level=args.accuracy_level,
        block_size=args.block_size,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        progress=print,
    )
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from edge_agent.engine.bundle import SessionConfig
    from edge_agent.engine.engine import EdgeEngine
    from fleetvl.sampling import SamplingParams

    t0 = time.perf_counter()
    engine = EdgeEngine(args.bundle, SessionConfig(intra_op_threads=args.threads))
    load_s = time.perf_counter() - t0
    images = [Path(p).read_bytes() for p in args.image]
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": args.question}]
    prompt = engine.encode([{"role": "user", "content": content}], images)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )
    gen = engine.stream(prompt, params)
    for event in gen:
        if not args.json:
            print(event.text, end="", flush=True)
    res = gen.result
    assert res is not None
    t = res.timings
    summary = {
        "answer": res.text,
        "finish_reason": res.finish_reason,
        "bundle": engine.digest[:16],
        "precision": engine.bundle.precision,
        "confidence": res.confidence.as_dict(),
        "prompt_tokens": t.prompt_tokens,
        "generated_tokens": t.generated_tokens,
        "load_s": round(load_s, 3),
        "vision_s": round(t.vision_s, 4),
        "ttft_s": round(t.ttft_s, 4),
        "decode_tokens_per_s": round(t.decode_tokens_per_s, 2),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print()
        print(
            f"-- {t.generated_tokens} tokens, TTFT {t.ttft_s * 1000:.0f} ms, "
            f"{t.decode_tokens_per_s:.1f} tok/s, mean log-prob {res.confidence.mean_logprob:.3f}, "
            f"finish={res.finish_reason}"
        )
    return 0


def _cmd_data_write(args: argparse.Namespace) -> int:
    from fleetvl_tools.fleetdata import write_split

    path = write_split(
        args.out_dir, args.split, args.n, seed=args.seed, size=args.size, progress=print,
        faults=args.faults,
    )  # fmt: skip
    print(f"wrote {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from fleetvl_tools.training.train import main as train_main

    return train_main(args.train_args)


def _request_log_to_stdout(logger: str) -> None:
    """A service's one-JSON-line-per-request log goes to stdout; everything else to stderr."""
    log = logging.getLogger(logger)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _load_config(load: Callable[[str], _Config], path: str, what: str) -> _Config | None:
    """``load(path)``, or None after printing the validation errors for a person."""
    from pydantic import ValidationError

    try:
        return load(path)
    except ValidationError as exc:
        print(f"error: invalid {what} {path}:\n{exc}", file=sys.stderr)
        return None


def _run_service(main: Coroutine[object, object, None]) -> int:
    """Run a service's ``serve()`` coroutine; a listener that cannot start is exit code 2."""
    import asyncio

    try:
        asyncio.run(main)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_router_run(args: argparse.Namespace) -> int:
    from router.config import RouterConfig
    from router.main import serve

    _request_log_to_stdout("fleetvl.router")
    config = _load_config(RouterConfig.load, args.config, "router config")
    if config is None:
        return 2
    if args.http_port is not None:
        config = config.model_copy(update={"http_port": args.http_port})
    if args.grpc_port is not None:
        config = config.model_copy(update={"grpc_port": args.grpc_port or None})
    return _run_service(serve(config))


def _cmd_edge_run(args: argparse.Namespace) -> int:
    from edge_agent.agent import AgentConfig, serve

    _request_log_to_stdout("fleetvl.edge.requests")
    config = _load_config(AgentConfig.load, args.config, "site config")
    if config is None:
        return 2
    if args.http_port is not None:
        config = config.model_copy(update={"http_port": args.http_port})
    return _run_service(serve(config))


def _calibrate_cloud(args: argparse.Namespace) -> int:
    """The cloud model's out-of-scope score (it has no gate to calibrate)."""
    from cloud_worker.engine import CloudEngine, EngineConfig
    from cloud_worker.engine.scope import ScopeExample, fit_scope, write_scope
    from fleetvl.vlm.bundle_manifest import file_sha256
    from fleetvl.vlm.labelled_set import read_labelled_set

    examples = [ScopeExample(ex["images"], ex["question"], ex["scene"])
                for ex in read_labelled_set(Path(args.labelled)) if ex["answerable"]]  # fmt: skip
    # Without the model's scope while fitting it: a new fit must not need the old one.
    engine = CloudEngine(args.bundle, EngineConfig(max_slots=16, max_context=1024), scope=False)
    try:
        model = fit_scope(engine, examples, alpha=args.alpha, progress=print)
    finally:
        engine.close()
    cal = write_scope(args.bundle, model, file_sha256(Path(args.labelled)), len(examples))
    assert cal.out_of_scope is not None
    print(f"out-of-scope score: scenes {', '.join(model.classes)}; cross-fitted false alarms "
          f"{cal.out_of_scope.cross_fitted_false_alarm:.3f} (alpha {args.alpha})")  # fmt: skip
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from edge_agent.calibrate import calibrate_bundle

    if args.cloud:
        return _calibrate_cloud(args)
    cal = calibrate_bundle(
        Path(args.bundle), Path(args.labelled), max_tokens=args.max_tokens, match=args.match,
        probe=not args.no_probe, alpha=args.alpha, out=Path(args.out) if args.out else None,
        progress=print,
    )  # fmt: skip
    print(f"base accuracy {cal.base_accuracy:.3f} over {cal.examples} examples")
    if cal.out_of_scope is not None:
        s = cal.out_of_scope
        print(f"out-of-scope score: scenes {', '.join(s.classes)}; cross-fitted false alarms "
              f"{s.cross_fitted_false_alarm:.3f} (alpha {s.alpha})")  # fmt: skip
    for name, sc in cal.signals.items():
        auroc = f"{sc.auroc:.3f}" if sc.auroc is not None else "n/a"
        print(f"  {name:12s} AUROC {auroc}  thresholds by accuracy {sc.by_accuracy}")
    return 0


def _cmd_controller_run(args: argparse.Namespace) -> int:
    import redis
    from pydantic import ValidationError

    from controller.config import ControllerConfig
    from controller.main import serve

    _request_log_to_stdout("fleetvl.controller")  # requests and session events
    config = _load_config(ControllerConfig.load, args.config, "controller config")
    if config is None:
        return 2
    try:
        config.fleet_spec()  # fail before listening, with the spec's own message
    except ValidationError as exc:
        print(f"error: invalid fleet spec:\n{exc}", file=sys.stderr)
        return 2
    try:
        return _run_service(serve(config))
    except redis.ConnectionError as exc:
        print(f"error: cannot reach Redis at {config.redis_url}: {exc}", file=sys.stderr)
        return 2


def _cmd_controller_check(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from controller.spec import load_spec
    from fleetvl.policy import resolve_policy

    try:
        spec = load_spec(args.spec)
    except ValidationError as exc:
        print(f"error: invalid fleet spec {args.spec}:\n{exc}", file=sys.stderr)
        return 2
    problems = 0
    for site in spec.sites:
        tenant = spec.tenants[site.tenant]
        r = resolve_policy(spec.global_policy, tenant=tenant.policy, site=site.policy)
        bundle = site.bundle or tenant.bundle or "-"
        p = r.policy
        print(
            f"{site.id:<24} {site.tenant:<14} {site.kind:<14} bundle={bundle:<16} "
            f"deadline={p.deadline_ms}ms residency={p.residency.value}"
        )
        for c in r.clamps:
            problems += 1
            print(f"  clamp: {c.level.value} sets {c.field}={c.requested!r}, kept {c.kept!r}")
    print(
        f"{len(spec.sites)} sites, {len(spec.tenants)} tenants, {len(spec.bundles)} bundles, "
        f"{len(spec.rollouts)} rollouts; {problems} policy clamps"
    )
    return 1 if problems else 0


def _up_config(args: argparse.Namespace) -> UpConfig:
    from fleetvl_tools.launch.config import UpConfig

    cfg = UpConfig.load(args.config)
    if args.base_port is not None:
        cfg = cfg.model_copy(update={"base_port": args.base_port})
    return cfg


def _cmd_up(args: argparse.Namespace) -> int:
    t_start = time.monotonic()  # the start of `fleetvl up`, for the first-answer time
    from fleetvl_tools.launch.main import run_up

    return run_up(
        _up_config(args), lambda m: print(m, flush=True), demo=args.demo,
        exit_after=args.exit_after_demo, t_start=t_start,
        demo_json=Path(args.json) if args.json else None,
    )  # fmt: skip


def _cmd_demo(args: argparse.Namespace) -> int:
    from fleetvl_tools.launch.main import demo_endpoints, run_demo

    endpoints = demo_endpoints(_up_config(args))
    run_demo(endpoints, lambda m: print(m, flush=True), Path(args.json) if args.json else None,
             per_site=args.per_site, burst=args.burst)  # fmt: skip
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleetvl", description="FleetVL: vision-language serving for fleets"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="build checkpoints and edge bundles")
    msub = model.add_subparsers(dest="model_command", required=True)
    init = msub.add_parser("init", help="build a Qwen-VL checkpoint from a preset (random weights)")
    init.add_argument("out_dir")
    init.add_argument("--preset", default="tiny", help="tiny | edge-bench")
    init.add_argument("--family", default=None, help="qwen2_5_vl (default) | qwen2_vl")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--dtype", default=None, help="float32 | bfloat16 (default by preset)")
    init.set_defaults(func=_cmd_model_init)

    exp = msub.add_parser("export", help="export a HF Qwen-VL directory to an edge bundle")
    exp.add_argument("hf_dir")
    exp.add_argument("out_dir")
    exp.add_argument("--precision", default="int4", choices=["fp32", "int8", "int4"])
    exp.add_argument("--accuracy-level", type=int, default=4, help="MatMulNBits compute type")
    exp.add_argument("--block-size", type=int, default=128, help="INT4/INT8 quantization block")
    exp.add_argument("--min-pixels", type=int, default=None, help="image budget floor")
    exp.add_argument("--max-pixels", type=int, default=None, help="image budget cap (pixels)")
    exp.set_defaults(func=_cmd_model_export)

    ask = sub.add_parser("ask", help="answer one question about images with an edge bundle")
    ask.add_argument("bundle")
    ask.add_argument("question")
    ask.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    ask.add_argument("--max-tokens", type=int, default=64)
    ask.add_argument("--temperature", type=float, default=0.0)
    ask.add_argument("--seed", type=int, default=None)
    ask.add_argument("--threads", type=int, default=0)
    ask.add_argument("--ignore-eos", action="store_true")
    ask.add_argument("--json", action="store_true", help="print one JSON summary")
    ask.set_defaults(func=_cmd_ask)

    data = sub.add_parser("data", help="the fleet VQA generator (substation and retail questions)")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dwrite = dsub.add_parser(
        "write", help="write a split as PNGs + JSONL (images, question, answer)"
    )
    dwrite.add_argument("out_dir")
    dwrite.add_argument("--split", default="val", choices=["train", "val", "test", "calib",
                                                           "heldout"])  # fmt: skip
    dwrite.add_argument("--faults", type=float, default=0.0,
                        help="share of questions seen through a mildly faulty camera (still "
                        "answerable); calibration sets use 0.2")  # fmt: skip
    dwrite.add_argument("--n", type=int, default=500, help="number of questions")
    dwrite.add_argument("--seed", type=int, default=0)
    dwrite.add_argument("--size", type=int, default=168, help="image side, a multiple of 28")
    dwrite.set_defaults(func=_cmd_data_write)

    train = sub.add_parser(
        "train",
        help="train a fleet model from scratch (`fleetvl train -- --help` for its options)",
        add_help=False,
    )
    train.add_argument("train_args", nargs=argparse.REMAINDER)
    train.set_defaults(func=_cmd_train)

    router = sub.add_parser("router", help="the cloud ingress (OpenAI-compatible HTTP + gRPC)")
    rsub = router.add_subparsers(dest="router_command", required=True)
    rrun = rsub.add_parser("run", help="serve until SIGINT/SIGTERM (in-flight requests drain)")
    rrun.add_argument("--config", required=True, help="router YAML (see examples/router.yaml)")
    rrun.add_argument("--http-port", type=int, default=None, help="override http_port")
    rrun.add_argument("--grpc-port", type=int, default=None, help="override grpc_port (0: off)")
    rrun.set_defaults(func=_cmd_router_run)

    ctl = sub.add_parser("controller", help="the fleet control plane (agents, policies, rollouts)")
    csub = ctl.add_subparsers(dest="controller_command", required=True)
    crun = csub.add_parser("run", help="serve agent sessions, the admin API and the status page")
    crun.add_argument("--config", required=True, help="controller YAML (examples/controller.yaml)")
    crun.set_defaults(func=_cmd_controller_run)
    cchk = csub.add_parser("check", help="validate a fleet spec and print each site's policy")
    cchk.add_argument("spec", help="fleet spec YAML (examples/fleet.yaml)")
    cchk.set_defaults(func=_cmd_controller_check)

    edge = sub.add_parser("edge", help="the site box agent")
    esub = edge.add_subparsers(dest="edge_command", required=True)
    erun = esub.add_parser("run", help="serve the site agent until SIGINT/SIGTERM")
    erun.add_argument("--config", required=True, help="site YAML (see examples/site.yaml)")
    erun.add_argument("--http-port", type=int, default=None, help="override http_port")
    erun.set_defaults(func=_cmd_edge_run)

    up = sub.add_parser("up", help="run the whole fleet on this machine (Ctrl-C stops it)")
    up.add_argument("--config", default="examples/up.yaml", help="ports, paths (examples/up.yaml)")
    up.add_argument("--base-port", type=int, default=None, help="override base_port")
    up.add_argument("--demo", action="store_true", help="run the demo workload once it is up")
    up.add_argument("--exit-after-demo", action="store_true", help="stop after the demo")
    up.add_argument("--json", default=None, help="write the demo report here")
    up.set_defaults(func=_cmd_up)

    demo = sub.add_parser("demo", help="drive a mixed workload through a running `fleetvl up`")
    demo.add_argument("--config", default="examples/up.yaml", help="the `fleetvl up` config")
    demo.add_argument("--base-port", type=int, default=None, help="override base_port")
    demo.add_argument("--per-site", type=int, default=6, help="steady requests per site")
    demo.add_argument("--burst", type=int, default=12, help="requests in the burst")
    demo.add_argument("--json", default=None, help="write the report here")
    demo.set_defaults(func=_cmd_demo)

    cal = sub.add_parser(
        "calibrate", help="calibrate a bundle's confidence gate and out-of-scope score"
    )
    cal.add_argument("bundle", help="edge bundle directory (calibration.json and scope.npz are "
                     "written there), or with --cloud a cloud model directory")  # fmt: skip
    cal.add_argument("labelled", help="JSONL: image/images, question, answer per line")
    cal.add_argument("--max-tokens", type=int, default=32)
    cal.add_argument("--match", default="exact", choices=["exact", "contains"])
    cal.add_argument("--no-probe", action="store_true", help="skip the hidden-state probe")
    cal.add_argument("--cloud", action="store_true",
                     help="fit a cloud model's out-of-scope score (its checkpoint directory)")
    cal.add_argument("--alpha", type=float, default=0.01,
                     help="share of in-scope inputs the out-of-scope score may refuse")  # fmt: skip
    cal.add_argument("--out", default=None, help="write elsewhere than BUNDLE/calibration.json")
    cal.set_defaults(func=_cmd_calibrate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        return int(args.func(args))
    except FleetVLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
